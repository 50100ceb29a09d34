//! The conformance suite against PostgreSQL.

mod common;

use common::fresh;

cairn_store::conformance_suite!(fresh);
