//! Batches of rows passed to the database as one JSON parameter and read back as a table
//! (SQLite's `json_each`, PostgreSQL's `jsonb_array_elements`): one statement for a whole
//! check-in batch, where bound parameters cost sqlx-sqlite time quadratic in their number
//! and cost PostgreSQL one round trip per few dozen rows.

use super::Backend;
use crate::error::{Error, Result};

/// The SQL type a column is read back as.
#[derive(Clone, Copy)]
pub(super) enum Col {
    Int,
    Text,
}

/// The columns of a batch of devices: (product id, device id).
pub(super) const DEVICES: [(&str, Col); 2] = [("product_id", Col::Int), ("device_id", Col::Text)];

/// A batch of rows (each a tuple or array of the columns, in order) as the JSON parameter
/// that [`rows`] reads.
pub(super) fn json(batch: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(batch)
        .map_err(|e| Error::Corrupt(format!("a batch of rows does not serialise: {e}")))
}

/// A sub-query yielding one row per element of the JSON array bound at `$param`, each
/// element an array holding the columns `cols` in order (JSON null reads as SQL NULL).
pub(super) fn rows(backend: Backend, param: usize, cols: &[(&str, Col)]) -> String {
    let fields = cols
        .iter()
        .enumerate()
        .map(|(i, (name, col))| match (backend, col) {
            (Backend::Sqlite, _) => format!("json_extract(value, '$[{i}]') AS {name}"),
            (Backend::Postgres, Col::Int) => format!("(x ->> {i})::bigint AS {name}"),
            (Backend::Postgres, Col::Text) => format!("(x ->> {i}) AS {name}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    match backend {
        Backend::Sqlite => format!("(SELECT {fields} FROM json_each(${param}))"),
        Backend::Postgres => {
            format!("(SELECT {fields} FROM jsonb_array_elements(${param}::jsonb) AS x)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sub_query_per_backend_with_the_columns_in_order() {
        let cols = [("p", Col::Int), ("d", Col::Text)];
        assert_eq!(
            rows(Backend::Sqlite, 1, &cols),
            "(SELECT json_extract(value, '$[0]') AS p, json_extract(value, '$[1]') AS d FROM json_each($1))"
        );
        assert_eq!(
            rows(Backend::Postgres, 2, &cols),
            "(SELECT (x ->> 0)::bigint AS p, (x ->> 1) AS d FROM jsonb_array_elements($2::jsonb) AS x)"
        );
    }
}
