//! The OpenAPI document as `cairn up` serves it, checked three ways against
//! the real binary (`--ephemeral --dev`, port 0):
//!
//! - its shape, here: every path parameter of a route template is declared
//!   exactly once and `in: path`, nothing else is in the path, no
//!   `(name, in)` pair repeats, and the routes the README tours are there;
//! - its validity, by `openapi-spec-validator` (OpenAPI 3.1);
//! - the API's answers to generated requests, by `schemathesis`: no 5xx,
//!   and every answer has a documented status, media type, headers and a
//!   body that matches its schema.
//!
//! The two Python tools are pinned in `.ci/openapi-tools.txt`; `.ci/run`
//! installs them into a virtual environment outside the clone
//! (`CAIRN_TEST_OPENAPI_PYENV`, default `~/.cache/cairn-test-openapi`).
//! Without them those tests skip with a notice, unless
//! `CAIRN_TEST_SERVICES=required`, where their absence is a failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

/// A `cairn up` that is stopped when the test ends, however it ends.
struct Cairn {
    child: Child,
    base: String,
    token: String,
}

impl Drop for Cairn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cairn up --ephemeral --dev` on a free port, once it has printed its
/// address and demo's admin token.
fn start() -> Cairn {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["up", "--ephemeral", "--dev", "--listen", "127.0.0.1:0"])
        .env_remove("CAIRN_STORE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the cairn binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut token) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("cairn up prints text");
        if let Some(rest) = line.strip_prefix("cairn up: listening on ") {
            base = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim_start().strip_prefix("token:") {
            token = Some(rest.trim().to_owned());
        }
        if line.trim_start().starts_with("stop:") {
            break;
        }
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Cairn {
        child,
        base: base.expect("cairn up printed its address"),
        token: token.expect("cairn up --dev printed a token"),
    }
}

async fn served_document(cairn: &Cairn) -> Value {
    let response = reqwest::get(format!("{}/openapi.json", cairn.base))
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("the document is JSON")
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Names that are query parameters wherever they appear in this API; one
/// of them declared `in: path` makes every generated client call a URL that
/// does not exist.
const QUERY_NAMES: [&str; 10] = [
    "status",
    "origin",
    "destination",
    "number",
    "after",
    "limit",
    "minPosition",
    "flightId",
    "stream",
    "type",
];

/// What is wrong with the parameters of `doc`'s operations, one line each.
fn parameter_faults(doc: &Value) -> Vec<String> {
    let mut faults = Vec::new();
    let Some(paths) = doc["paths"].as_object() else {
        return vec!["the document has no paths".into()];
    };
    for (template, item) in paths {
        let in_template: BTreeSet<&str> = template
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .collect();
        let shared = item["parameters"].as_array().cloned().unwrap_or_default();
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let at = format!("{} {template}", method.to_uppercase());
            let own = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
            for parameter in shared.iter().chain(&own) {
                let (Some(name), Some(place)) =
                    (parameter["name"].as_str(), parameter["in"].as_str())
                else {
                    faults.push(format!("{at}: a parameter without name or in: {parameter}"));
                    continue;
                };
                *seen.entry((name.to_owned(), place.to_owned())).or_default() += 1;
                if !["path", "query", "header", "cookie"].contains(&place) {
                    faults.push(format!("{at}: {name} is in {place}"));
                }
                if place == "path" && QUERY_NAMES.contains(&name) {
                    faults.push(format!("{at}: query parameter {name} is declared in: path"));
                }
                if place == "path" && parameter["required"] != json!(true) {
                    faults.push(format!("{at}: path parameter {name} is not required"));
                }
            }
            for ((name, place), count) in &seen {
                if *count > 1 {
                    faults.push(format!(
                        "{at}: {name} (in {place}) is declared {count} times"
                    ));
                }
            }
            let declared: BTreeSet<&str> = seen
                .keys()
                .filter(|(_, place)| place == "path")
                .map(|(name, _)| name.as_str())
                .collect();
            if declared != in_template {
                faults.push(format!(
                    "{at}: path parameters {declared:?}, but the template has {in_template:?}"
                ));
            }
        }
    }
    faults
}

#[test]
fn the_parameter_check_finds_what_it_is_for() {
    // Query parameters declared in the path, an id declared twice and a
    // template name never declared: the faults the document once had.
    let broken = json!({"paths": {
        "/api/flights": {"get": {"parameters": [
            {"name": "status", "in": "path", "required": true},
            {"name": "limit", "in": "query"}
        ]}},
        "/api/flights/{id}": {"get": {"parameters": [
            {"name": "id", "in": "path", "required": true},
            {"name": "id", "in": "path", "required": true}
        ]}},
        "/api/passengers/{id}": {"delete": {"parameters": []}}
    }});
    let faults = parameter_faults(&broken);
    assert!(
        faults.iter().any(|f| f.contains("query parameter status")),
        "{faults:?}"
    );
    assert!(
        faults.iter().any(|f| f.contains("declared 2 times")),
        "{faults:?}"
    );
    assert!(
        faults
            .iter()
            .any(|f| f.starts_with("DELETE /api/passengers/{id}: path parameters {}")),
        "{faults:?}"
    );
    assert_eq!(faults.len(), 4, "{faults:?}");
}

#[tokio::test]
async fn every_parameter_is_declared_once_and_in_its_place() {
    let cairn = start();
    let doc = served_document(&cairn).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let faults = parameter_faults(&doc);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
    let mut ids = BTreeMap::<&str, usize>::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for method in METHODS {
            if let Some(id) = item[method]["operationId"].as_str() {
                *ids.entry(id).or_default() += 1;
            }
        }
    }
    ids.retain(|_, count| *count > 1);
    assert!(ids.is_empty(), "operation ids used more than once: {ids:?}");

    // The routes of the README's tour are all described.
    for (method, path) in [
        ("post", "/api/flights"),
        ("get", "/api/flights"),
        ("get", "/api/flights/{id}"),
        ("patch", "/api/flights/{id}"),
        ("delete", "/api/flights/{id}"),
        ("post", "/api/flights/{id}/departure"),
        ("post", "/api/flights/{id}/landing"),
        ("post", "/api/passengers"),
        ("get", "/api/passengers"),
        ("get", "/api/passengers/{id}"),
        ("delete", "/api/passengers/{id}"),
        ("post", "/api/passengers/{id}/boarding"),
        ("get", "/api/audit"),
        ("get", "/health/ready"),
        ("get", "/metrics"),
        ("post", "/realms/{tenant}/protocol/openid-connect/token"),
        ("post", "/api/admin/tenants"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{} {path} is not in the document",
            method.to_uppercase()
        );
    }
    // The list filters are query parameters, and a list is a page.
    let list = &doc["paths"]["/api/flights"]["get"];
    let status = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "status")
        .expect("GET /api/flights declares status");
    assert_eq!(status["in"], "query");
    let page = &list["responses"]["200"]["content"]["application/json"]["schema"];
    let page = resolve(&doc, page);
    assert!(page["properties"]["items"].is_object(), "{page}");
    assert!(page["properties"]["next"].is_object(), "{page}");
    // Creating answers 201 with Location, deleting 204; errors are problems.
    let create = &doc["paths"]["/api/flights"]["post"]["responses"];
    assert!(create["201"]["headers"]["Location"].is_object(), "{create}");
    assert!(
        doc["paths"]["/api/flights/{id}"]["delete"]["responses"]["204"].is_object(),
        "DELETE /api/flights/{{id}} answers 204"
    );
    assert_eq!(
        create["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
}

/// `schema`, or the component it refers to.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| doc.pointer(pointer))
        .unwrap_or(schema)
}

fn required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").as_deref() == Ok("required")
}

/// The virtual environment with the pinned tools, if they are installed.
fn pyenv(tool: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("CAIRN_TEST_OPENAPI_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/cairn-test-openapi")
        });
    let python = venv.join("bin/python");
    let module = tool.replace('-', "_");
    let present = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Some(venv);
    }
    let why = format!(
        "{tool} is not installed in {} (`.ci/run` installs it: pip install -r .ci/openapi-tools.txt)",
        venv.display()
    );
    assert!(!required(), "{why}; CAIRN_TEST_SERVICES=required");
    eprintln!("skipping: {why}; set CAIRN_TEST_SERVICES=required to fail instead");
    None
}

/// Runs `command` to its end or until `limit`, then kills it: its exit
/// status (`None` when killed) and everything it printed.
fn run_bounded(
    mut command: Command,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tool starts");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    })
    .collect();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the tool can be waited for") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = readers
        .into_iter()
        .map(|reader| reader.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    (status, output)
}

fn validate(venv: &Path, document: &Path) -> (bool, String) {
    let mut command = Command::new(venv.join("bin/python"));
    command.args(["-m", "openapi_spec_validator"]).arg(document);
    let (status, output) = run_bounded(command, Duration::from_secs(120));
    (status.is_some_and(|s| s.success()), output)
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let Some(venv) = pyenv("openapi-spec-validator") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // The validator rejects what it should: a path parameter that is not
    // declared (the document's old fault).
    let broken = dir.path().join("broken.json");
    let old = json!({
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/api/flights/{id}": {"get": {
            "parameters": [{"name": "limit", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "ok"}}
        }}}
    });
    std::fs::write(&broken, old.to_string()).unwrap();
    let (valid, output) = validate(&venv, &broken);
    assert!(
        !valid,
        "the validator accepted a broken document:\n{output}"
    );

    let cairn = start();
    let doc = served_document(&cairn).await;
    let served = dir.path().join("openapi.json");
    std::fs::write(&served, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let (valid, output) = validate(&venv, &served);
    assert!(
        valid,
        "openapi-spec-validator rejects the document:\n{output}"
    );
}

/// Makes a flight and a passenger, so that the generated requests reach
/// resources that exist and not only 404s.
async fn seed(cairn: &Cairn) -> (String, String) {
    let client = Client::new();
    let created = client
        .post(format!("{}/api/flights", cairn.base))
        .bearer_auth(&cairn.token)
        .json(
            &json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
            "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z",
            "capacity": 180}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let flight: Value = created.json().await.unwrap();
    let flight = flight["id"].as_str().unwrap().to_owned();
    let added = client
        .post(format!("{}/api/passengers", cairn.base))
        .bearer_auth(&cairn.token)
        .header(header::CONTENT_TYPE, "application/json")
        .json(&json!({"flightId": flight, "name": "Ada Lovelace", "document": "P1234567"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let passenger: Value = added.json().await.unwrap();
    (flight, passenger["id"].as_str().unwrap().to_owned())
}

/// At most this many generated requests per operation and phase: enough
/// to reach every documented status of the flight routes, small enough for
/// well under a minute.
const MAX_EXAMPLES: u32 = 50;

/// A hard bound on the whole fuzzing run.
const FUZZ_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn fuzzed_requests_get_documented_answers_and_no_server_error() {
    let Some(venv) = pyenv("schemathesis") else {
        return;
    };
    let cairn = start();
    let (flight, passenger) = seed(&cairn).await;
    let dir = tempfile::tempdir().unwrap();
    // Path parameters mostly name what exists; the rest of the time they
    // are generated like everything else.
    let config = format!(
        r#"color = false

[dictionaries.ids]
values = ["{flight}", "{passenger}"]

[dictionaries.tenants]
values = ["demo"]

[parameters]
"path.id" = {{ dictionary = "ids", probability = 0.7 }}
"path.tenant" = {{ dictionary = "tenants", probability = 0.7 }}
"#
    );
    let config_file = dir.path().join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();

    let mut command = Command::new(venv.join("bin/schemathesis"));
    command
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(format!("{}/openapi.json", cairn.base))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", cairn.token),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", "15"])
        .args(["--request-timeout", "30"])
        // One worker: the generator is not thread-safe in every release.
        .args(["--workers", "1"])
        .arg("--continue-on-failure")
        .env("NO_COLOR", "1");
    let (status, output) = run_bounded(command, FUZZ_LIMIT);
    let Some(status) = status else {
        panic!("schemathesis did not finish within {FUZZ_LIMIT:?}:\n{output}");
    };
    assert!(
        status.success(),
        "schemathesis found answers that break the document:\n{output}"
    );
    // It ran: every operation was tested.
    assert!(
        output.contains("Tested:"),
        "schemathesis printed no summary:\n{output}"
    );
}

#[tokio::test]
async fn a_position_no_write_has_reached_is_refused_not_waited_for() {
    let cairn = start();
    let client = Client::new();
    let created = client
        .post(format!("{}/api/flights", cairn.base))
        .bearer_auth(&cairn.token)
        .json(
            &json!({"number": "SK1422", "origin": "ARN", "destination": "CPH",
            "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T09:10:00Z",
            "capacity": 90}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let position: u64 = created.headers()["x-cairn-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let flight: Value = created.json().await.unwrap();
    let flight = flight["id"].as_str().unwrap();

    let read = |query: String| {
        let client = client.clone();
        let token = cairn.token.clone();
        async move {
            let response = client.get(query).bearer_auth(token).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for path in [
        "/api/flights".to_owned(),
        format!("/api/flights/{flight}"),
        "/api/passengers".to_owned(),
        "/api/audit".to_owned(),
    ] {
        // The write's own position is there.
        let (status, _) = read(format!("{}{path}?minPosition={position}", cairn.base)).await;
        assert_eq!(status, StatusCode::OK, "{path} at {position}");
        // Past the head, and past anything a store can number.
        for beyond in [position + 1000, 1 << 63, u64::MAX] {
            let (status, problem) =
                read(format!("{}{path}?minPosition={beyond}", cairn.base)).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} at {beyond}"
            );
            assert_eq!(problem["code"], "validation_failed");
            assert_eq!(problem["errors"][0]["field"], "minPosition");
        }
    }
}
