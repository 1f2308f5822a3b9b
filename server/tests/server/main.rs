//! The server's integration tests, one binary: the spine (publish, install, update, attack,
//! roll back), signed answers and what a device refuses of them (`answers`), the fleet (channels, rollouts, pinning, floors; rollouts paced by an egress
//! budget and changed after they started: `pacing`), what operators meet
//! (`operators`: routes, replicas, bad requests, the operator CLI and its completions and
//! man pages, shutdown), the data (stored files written once, the orphan sweep, device
//! retention, caches), the HTTP edge against hostile clients (`edge`) and the binary over
//! HTTPS with a private certificate authority (`tls`), each case on both backends where the
//! backend matters; who may do what (`access`: token scopes, users, rollbacks that go back)
//! the dashboard (`dashboard`; its admin pages and rollback form: `admin`), the savings
//! ledger and the diff pages against the API (`ledger`), backups that restore (`backup`),
//! the container image, run with podman (`container`), and Debian's nginx with the
//! examples in `deploy/nginx/` (`cache`). The harness is in `common`.

#[macro_use]
mod common;
mod access;
mod admin;
mod answers;
mod backup;
mod browser;
mod cache;
mod container;
mod dashboard;
mod data;
mod edge;
mod fleet;
mod ledger;
mod operators;
mod pacing;
mod spine;
mod tls;
