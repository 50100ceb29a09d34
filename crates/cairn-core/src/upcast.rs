//! Upcasting: reading old schema versions as the current one.
//!
//! An upcaster lifts one event type's payload from schema version N to N+1.
//! On read, [`Upcasters::upcast`] applies them one after another until no
//! further step is registered, so a payload written at version 1 is read as
//! version 3 when steps 1->2 and 2->3 exist. Stored events are never
//! rewritten.

use std::{collections::HashMap, fmt, sync::Arc};

use serde_json::Value;

type Step = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// The upcasters of one service, keyed by event type and source version.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Step>,
}

/// An upcaster refused a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot upcast {event_type} from schema version {from_version}: {reason}")]
pub struct UpcastError {
    pub event_type: String,
    pub from_version: u32,
    pub reason: String,
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that lifts `event_type` from `from_version` to
    /// `from_version + 1`. A later registration for the same key replaces it.
    pub fn register<F>(&mut self, event_type: &str, from_version: u32, step: F) -> &mut Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.steps
            .insert((event_type.to_owned(), from_version), Arc::new(step));
        self
    }

    /// Applies every registered step from `version` on; returns the version
    /// reached and the lifted payload.
    pub fn upcast(
        &self,
        event_type: &str,
        mut version: u32,
        mut data: Value,
    ) -> Result<(u32, Value), UpcastError> {
        // Looking up by (&str, u32) without allocating needs a borrowed key
        // type; event types are short, so the allocation per step is cheap and
        // only paid when steps exist at all.
        if self.steps.is_empty() {
            return Ok((version, data));
        }
        while let Some(step) = self.steps.get(&(event_type.to_owned(), version)) {
            data = step(data).map_err(|reason| UpcastError {
                event_type: event_type.to_owned(),
                from_version: version,
                reason,
            })?;
            version += 1;
        }
        Ok((version, data))
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_chain_until_none_is_registered() {
        let mut up = Upcasters::new();
        up.register("Renamed", 1, |mut v| {
            let name = v["name"].take();
            Ok(json!({ "fullName": name }))
        })
        .register("Renamed", 2, |mut v| {
            v["title"] = json!(null);
            Ok(v)
        });
        let (v, data) = up.upcast("Renamed", 1, json!({"name": "Ada"})).unwrap();
        assert_eq!(v, 3);
        assert_eq!(data, json!({"fullName": "Ada", "title": null}));
        // already current: untouched
        let (v, data) = up.upcast("Renamed", 3, json!({"x": 1})).unwrap();
        assert_eq!((v, data), (3, json!({"x": 1})));
        // other types: untouched
        assert_eq!(up.upcast("Other", 1, json!(1)).unwrap(), (1, json!(1)));
    }

    #[test]
    fn a_failing_step_is_reported_with_its_version() {
        let mut up = Upcasters::new();
        up.register("E", 1, |_| Err("missing field".into()));
        let err = up.upcast("E", 1, json!({})).unwrap_err();
        assert_eq!(err.from_version, 1);
        assert!(err.to_string().contains("missing field"));
    }
}
