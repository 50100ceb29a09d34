//! Resource ids: a dot-separated name, the service first, and an optional
//! query after `?`.

use std::fmt;

use crate::ResError;

/// Longest resource id accepted, in bytes (name and query).
pub const MAX_RID_BYTES: usize = 512;

/// A resource id: `flights.flight.7f3a`, `audit.log?type=FlightScheduled`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rid {
    name: String,
    query: Option<String>,
}

impl Rid {
    /// Reads a resource id. The name's parts are non-empty and hold no
    /// white space, `?`, `*` or `>` (the latter two are wildcards on the
    /// messaging side); the query, when there is one, is kept as written
    /// (without white space) and may be empty only if absent.
    pub fn parse(text: &str) -> Result<Self, ResError> {
        if text.is_empty() || text.len() > MAX_RID_BYTES {
            return Err(ResError::invalid_request("a resource id is 1 to 512 bytes"));
        }
        let (name, query) = match text.split_once('?') {
            Some((name, query)) => (name, Some(query)),
            None => (text, None),
        };
        if !name.split('.').all(is_valid_part) {
            return Err(ResError::invalid_request(format!(
                "{text:?} is not a resource id: parts are non-empty, without white space, '?', '*' or '>'"
            )));
        }
        if let Some(query) = query
            && (query.is_empty() || query.chars().any(char::is_whitespace))
        {
            return Err(ResError::invalid_request(format!(
                "{text:?} is not a resource id: a query is non-empty, without white space"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            query: query.map(str::to_owned),
        })
    }

    /// The name, without the query.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The service owning the resource: the name's first part.
    pub fn service(&self) -> &str {
        self.name.split('.').next().unwrap_or_default()
    }

    /// The name's parts.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.name.split('.')
    }
}

impl fmt::Display for Rid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.query {
            Some(query) => write!(f, "{}?{query}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Whether the resource name `name` matches `pattern`: a name whose parts
/// may be `*` (any one part) and, last, `>` (one part or more), as a RES
/// service's `system.reset` may name resources. A pattern without them
/// matches itself only.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if !is_pattern(pattern) {
        return pattern == name;
    }
    let mut names = name.split('.');
    let mut parts = pattern.split('.').peekable();
    while let Some(part) = parts.next() {
        if part == ">" && parts.peek().is_none() {
            return names.next().is_some();
        }
        match names.next() {
            Some(n) if part == "*" || part == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

/// Whether `name` has a wildcard part (`*`, `>`).
pub fn is_pattern(name: &str) -> bool {
    name.split('.').any(|p| p == "*" || p == ">")
}

/// Whether `part` may be one part of a resource name, or a method name.
pub(crate) fn is_valid_part(part: &str) -> bool {
    !part.is_empty()
        && !part
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '?' | '*' | '>' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_part_by_part() {
        for (pattern, name, matches) in [
            ("flights.flight.7", "flights.flight.7", true),
            ("flights.flight.7", "flights.flight.8", false),
            ("flights.flight.*", "flights.flight.7", true),
            ("flights.flight.*", "flights.flight", false),
            ("flights.flight.*", "flights.flight.7.x", false),
            ("flights.*.7", "flights.flight.7", true),
            ("flights.>", "flights.flight.7", true),
            ("flights.>", "flights.flights", true),
            ("flights.>", "flights", false),
            ("flights.>", "passengers.flight.7", false),
            ("*.flight.>", "passengers.flight.7", true),
            // `>` only counts last; elsewhere it is no part of a name.
            ("flights.>.7", "flights.flight.7", false),
        ] {
            assert_eq!(name_matches(pattern, name), matches, "{pattern} ~ {name}");
        }
        assert!(is_pattern("flights.*") && is_pattern("a.>") && !is_pattern("a.b"));
    }

    #[test]
    fn names_and_queries_are_read() {
        let rid = Rid::parse("flights.flight.7f3a").unwrap();
        assert_eq!(rid.name(), "flights.flight.7f3a");
        assert_eq!(rid.query(), None);
        assert_eq!(rid.service(), "flights");
        assert_eq!(
            rid.parts().collect::<Vec<_>>(),
            ["flights", "flight", "7f3a"]
        );
        let rid = Rid::parse("audit.log?type=FlightScheduled&stream=flight-1.2").unwrap();
        assert_eq!(rid.name(), "audit.log");
        assert_eq!(rid.query(), Some("type=FlightScheduled&stream=flight-1.2"));
        assert_eq!(
            rid.to_string(),
            "audit.log?type=FlightScheduled&stream=flight-1.2"
        );
        assert_eq!(Rid::parse("flights").unwrap().service(), "flights");
    }

    #[test]
    fn bad_ids_are_invalid_requests() {
        for bad in [
            "",
            ".flights",
            "flights.",
            "flights..flight",
            "flights.fl ight",
            "flights.*",
            "flights.>",
            "flights?",
            "flights?a b",
            "?q=1",
        ] {
            let err = Rid::parse(bad).unwrap_err();
            assert_eq!(err.code, "system.invalidRequest", "{bad:?}");
        }
        assert!(Rid::parse(&"a".repeat(MAX_RID_BYTES)).is_ok());
        assert!(Rid::parse(&"a".repeat(MAX_RID_BYTES + 1)).is_err());
    }
}
