//! API tests: each test starts the real server on a random port over a fresh
//! data dir and talks HTTP to it, as a client would.

mod access;
mod catalog;
mod credentials;
mod encryption;
mod helpers;
mod identity;
mod import;
mod ingress;
mod keys;
mod limits;
mod openapi;
mod replicas;
mod services;
mod sessions;
mod validation;
