//! The server's integration tests, one binary: the spine (publish, install, update, attack,
//! roll back), the fleet (channels, rollouts, pinning, floors), what operators meet
//! (`operators`: routes, replicas, bad requests, the operator CLI, shutdown), the data
//! (stored files written once, the orphan sweep, device retention, caches) and the HTTP
//! edge against hostile clients (`edge`), each case on both backends where the backend
//! matters; who may do what (`access`: token scopes, users, rollbacks that go back) and the
//! dashboard's sign-in (`dashboard`). The harness is in `common`.

#[macro_use]
mod common;
mod access;
mod dashboard;
mod data;
mod edge;
mod fleet;
mod operators;
mod spine;
