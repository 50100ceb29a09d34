//! `/openapi.json`: one OpenAPI 3.1 document merged from the services'.

use crate::common::spawn;

#[tokio::test]
async fn openapi_json_is_3_1_with_the_merged_paths_and_the_problem_schema() {
    let app = spawn(None).await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: serde_json::Value = response.json().await.unwrap();

    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(doc["info"]["title"], "cairn-http tests");

    let post = &doc["paths"]["/flights"]["post"];
    assert!(post.is_object(), "merged service path missing: {doc}");
    assert!(post["requestBody"].is_object());
    assert!(post["responses"]["201"].is_object());
    assert_eq!(
        post["responses"]["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert!(doc["paths"]["/health/ready"]["get"].is_object());
    assert!(doc["paths"]["/metrics"]["get"].is_object());

    let schemas = &doc["components"]["schemas"];
    for name in [
        "Problem",
        "FieldError",
        "HealthReport",
        "NewFlight",
        "Flight",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let problem = &schemas["Problem"]["properties"];
    for member in ["type", "title", "status", "detail", "code", "errors"] {
        assert!(problem[member].is_object(), "Problem.{member} missing");
    }
    app.stop().await;
}
