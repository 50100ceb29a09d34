//! The Flights bounded context: a flight's schedule and its life from
//! scheduled to departed to landed, or deleted.

pub mod app;
pub mod departure;
pub mod domain;
pub mod http;
pub mod messaging;
pub mod view;
