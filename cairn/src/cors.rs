//! The CORS settings of `cairn up` and `cairn run` (a service or the
//! gateway): which browser origins may call the API, as
//! `cairn_http::CorsOptions`. Nothing is allowed by default, and a bad
//! setting (a malformed origin, `*` with credentials, a max age over a
//! day) stops the process at start-up, before it listens or touches data.

use std::time::Duration;

use anyhow::{Context as _, bail};
use cairn_http::CorsOptions;

/// The CORS flags, the same on every command that serves HTTP.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct CorsArgs {
    /// Let pages of this origin (scheme://host[:port]) call the API from a
    /// browser; repeatable (comma-separated in CAIRN_CORS_ORIGIN). `*`
    /// allows any origin, but not with --cors-credentials. Default: none,
    /// and no CORS headers at all.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "CAIRN_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub(crate) cors_origin: Vec<String>,
    /// Let those origins' pages send credentials (cookies) and read the
    /// answers to them (Access-Control-Allow-Credentials).
    #[arg(long)]
    pub(crate) cors_credentials: bool,
    /// How long a browser may keep a preflight's answer, in seconds
    /// (default 600, at most 86400).
    #[arg(long, value_name = "SECS", env = "CAIRN_CORS_MAX_AGE")]
    pub(crate) cors_max_age: Option<u64>,
}

impl CorsArgs {
    /// The options these flags give.
    pub(crate) fn options(&self) -> anyhow::Result<CorsOptions> {
        cors_options(&self.cors_origin, self.cors_credentials, self.cors_max_age)
    }
}

/// Checked CORS options from their settings.
pub(crate) fn cors_options(
    origins: &[String],
    credentials: bool,
    max_age_secs: Option<u64>,
) -> anyhow::Result<CorsOptions> {
    if origins.is_empty() && credentials {
        bail!("--cors-credentials needs --cors-origin: name the origins that may send them");
    }
    let options = CorsOptions::new(origins, credentials).context("--cors-origin")?;
    match max_age_secs {
        Some(secs) => Ok(options
            .with_max_age(Duration::from_secs(secs))
            .context("--cors-max-age")?),
        None => Ok(options),
    }
}

/// One banner line, or `None` when CORS is off.
pub(crate) fn banner(options: &CorsOptions) -> Option<String> {
    options.is_enabled().then(|| {
        format!(
            "  cors:         {}{} (preflights cached {} s)",
            options.origins().join(", "),
            if options.credentials() {
                ", with credentials"
            } else {
                ""
            },
            options.max_age().as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn settings_become_checked_options() {
        let off = cors_options(&[], false, None).unwrap();
        assert!(!off.is_enabled());
        assert!(banner(&off).is_none());
        let on = cors_options(&strings(&["https://console.example"]), true, Some(60)).unwrap();
        assert_eq!(on.origins(), ["https://console.example"]);
        assert_eq!(on.max_age(), Duration::from_secs(60));
        let line = banner(&on).unwrap();
        assert!(
            line.contains("https://console.example, with credentials"),
            "{line}"
        );
    }

    #[test]
    fn bad_settings_stop_with_a_reason() {
        let fails = |origins: &[&str], credentials: bool, max_age: Option<u64>, says: &str| {
            let err = format!(
                "{:#}",
                cors_options(&strings(origins), credentials, max_age).unwrap_err()
            );
            assert!(err.contains(says), "{origins:?}: {err}");
        };
        fails(&["*"], true, None, "cannot be used with credentials");
        fails(&["console.example"], false, None, "--cors-origin");
        fails(&["https://a.example/"], false, None, "no path");
        fails(
            &["https://a.example"],
            false,
            Some(86_401),
            "--cors-max-age",
        );
        fails(&[], true, None, "needs --cors-origin");
    }
}
