//! Immutable downloads: objects, deltas and packs by their content address, with a long
//! cache lifetime, an ETag, `If-None-Match` and single-range requests. Bytes sent are
//! counted in `/metrics` by who reads them: devices, or holders of an upload token (the
//! publisher reading back what it stored while it packs a release).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use deltaroot_format::{delta_path, object_path, pack_path, Hash};
use futures::StreamExt;

use super::extract::{parse_hash, Caller};
use crate::error::{Error, Result};
use crate::metrics::Reader;
use crate::App;

fn reader(caller: &Option<Caller>) -> Reader {
    match caller {
        Some(_) => Reader::Token,
        None => Reader::Device,
    }
}

pub async fn get_pack(
    State(app): State<App>,
    caller: Option<Caller>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = reader(&caller);
    get_hashed(&app, &fan, &name, &headers, "pack", pack_path, who).await
}

pub async fn get_object(
    State(app): State<App>,
    caller: Option<Caller>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let who = reader(&caller);
    get_hashed(&app, &fan, &name, &headers, "object", object_path, who).await
}

/// Serves the object or pack named by its hash, under its fan-out only.
async fn get_hashed(
    app: &App,
    fan: &str,
    name: &str,
    headers: &HeaderMap,
    kind: &'static str,
    path: fn(&Hash) -> String,
    who: Reader,
) -> Result<Response> {
    let hash = parse_hash(name)?;
    if fan != hash.fanout() {
        return Err(Error::NotFound(format!("no {kind} {fan}/{name}")));
    }
    serve_immutable(app, &path(&hash), name, headers, kind, who).await
}

pub async fn get_delta(
    State(app): State<App>,
    caller: Option<Caller>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let Some((s, t)) = name.split_once('-') else {
        return Err(Error::NotFound(format!("no delta {fan}/{name}")));
    };
    let (source, target) = (parse_hash(s)?, parse_hash(t)?);
    if fan != target.fanout() {
        return Err(Error::NotFound(format!("no delta {fan}/{name}")));
    }
    serve_immutable(
        &app,
        &delta_path(&source, &target),
        &name,
        &headers,
        "delta",
        reader(&caller),
    )
    .await
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// Malformed, multi-range or another unit: ignored, the whole file is served (RFC 9110).
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

fn parse_range(v: &str, len: u64) -> RangeAsk {
    let Some(spec) = v.strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let r = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        len.saturating_sub(n)..len
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        let end = if b.is_empty() {
            len
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.saturating_add(1).min(len),
                _ => return RangeAsk::Whole,
            }
        };
        start..end
    };
    if r.start < r.end {
        RangeAsk::Part(r)
    } else {
        RangeAsk::Unsatisfiable
    }
}

/// Serves an immutable file: long cache lifetime, ETag, and single-range requests.
async fn serve_immutable(
    app: &App,
    rel: &str,
    name: &str,
    headers: &HeaderMap,
    kind: &'static str,
    who: Reader,
) -> Result<Response> {
    let not_found = || Error::NotFound(format!("no {kind} {rel}"));
    let etag = format!("\"{name}\"");
    let mut resp = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let revalidate = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    // The length is needed before the body only to answer a range or a revalidation.
    let known_len = if range_header.is_some() || revalidate {
        Some(app.store.size(rel).await?.ok_or_else(not_found)?)
    } else {
        None
    };
    if revalidate {
        return Ok(resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    let ask = match (range_header, known_len) {
        (Some(v), Some(len)) => parse_range(v, len),
        _ => RangeAsk::Whole,
    };
    let range = match ask {
        RangeAsk::Whole => None,
        RangeAsk::Part(r) => Some(r),
        RangeAsk::Unsatisfiable => {
            let len = known_len.unwrap_or(0);
            let body = serde_json::to_vec(&deltaroot_format::api::ErrorBody {
                error: format!("range does not fit {rel} of {len} bytes"),
            })
            .expect("serialises");
            return Ok(resp
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .expect("valid response"));
        }
    };
    if known_len == Some(0) {
        return Ok(resp
            .header(header::CONTENT_LENGTH, 0)
            .body(Body::empty())
            .expect("valid response"));
    }
    let (len, stream) = app
        .store
        .open_range(rel, range.clone())
        .await?
        .ok_or_else(not_found)?;
    let sent = match &range {
        Some(r) => {
            resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            r.end - r.start
        }
        None => len,
    };
    resp = resp.header(header::CONTENT_LENGTH, sent);
    let counter = app.metrics.clone();
    let stream = stream.map(move |chunk| {
        if let Ok(c) = &chunk {
            counter
                .sent(kind, who)
                .fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        chunk
    });
    Ok(resp
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeAsk::*};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90..100));
        assert_eq!(parse_range("bytes=95-200", 100), Part(95..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=9-2", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
    }
}
