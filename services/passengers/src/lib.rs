//! The Passengers bounded context: who flies on which flight, and who has
//! boarded.

pub mod app;
pub mod domain;
pub mod http;
pub mod messaging;
pub mod view;
