//! cairn-http over real HTTP: a tiny service served on 127.0.0.1:0, called
//! with reqwest (and, for chunked bodies, a raw TCP client).

#![allow(unreachable_pub, dead_code)]

mod common;
mod cors;
mod errors;
mod groups;
mod health;
mod idempotency;
mod metrics;
mod openapi;
mod projections_admin;
mod serve;
