//! Every dispatch runs inside a `bus.dispatch` span carrying kind, name,
//! tenant and correlation id, and a failure records its error code on it.
//! Its own test binary: the subscriber is installed as this thread's
//! default, which must not race with other tests' callsite registrations.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use cairn_core::{RequestContext, TenantId, ValidationError};
use cairn_domain::{BusError, Command, CommandBus};
use tracing::{
    Event, Metadata, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};

type Fields = Vec<(String, String)>;

/// Records every span's name and fields.
#[derive(Default)]
struct Spans {
    spans: Mutex<Vec<(&'static str, Fields)>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

struct Capture(Arc<Spans>);

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Vec::new();
        attrs.record(&mut Collect(&mut fields));
        let mut spans = self.0.spans.lock().unwrap();
        spans.push((attrs.metadata().name(), fields));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.spans.lock().unwrap();
        let index = span.into_u64() as usize - 1;
        values.record(&mut Collect(&mut spans[index].1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Rename {
    name: String,
}

impl Command for Rename {
    const NAME: &'static str = "concerts.rename";
    type Output = ();
    fn validate(&self) -> Result<(), Vec<ValidationError>> {
        if self.name.is_empty() {
            return Err(vec![ValidationError::new("name", "must not be empty")]);
        }
        Ok(())
    }
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "current_thread")]
async fn each_dispatch_gets_a_span_with_its_identity_and_outcome() {
    let spans = Arc::new(Spans::default());
    let _guard = tracing::subscriber::set_default(Capture(Arc::clone(&spans)));

    let bus = CommandBus::new();
    bus.register_fn(|_ctx: RequestContext, _cmd: Rename| async { Ok::<(), BusError>(()) })
        .unwrap();
    let ctx = RequestContext::new(TenantId::new("acme").unwrap()).with_correlation_id("corr-7");

    bus.send(&ctx, Rename { name: "x".into() }).await.unwrap();
    bus.send(
        &ctx,
        Rename {
            name: String::new(),
        },
    )
    .await
    .unwrap_err();

    let spans = spans.spans.lock().unwrap();
    let dispatches: Vec<&Fields> = spans
        .iter()
        .filter(|(name, _)| *name == "bus.dispatch")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(dispatches.len(), 2, "{spans:?}");
    for fields in &dispatches {
        assert_eq!(field(fields, "kind"), Some("command"));
        assert_eq!(field(fields, "name"), Some("concerts.rename"));
        assert_eq!(field(fields, "tenant"), Some("acme"));
        assert_eq!(field(fields, "correlation_id"), Some("corr-7"));
    }
    assert_eq!(field(dispatches[0], "error_code"), None);
    assert_eq!(
        field(dispatches[1], "error_code"),
        Some("validation_failed")
    );
}
