//! Checking real answers against the document: the response a status maps to, and JSON Schema
//! (2020-12, formats checked) validators for its schemas and components.

use serde_json::{Value, json};

use crate::requests::Answer;

/// Validators for the responses the document declares.
pub(crate) struct Schemas {
    pub(crate) doc: Value,
}

impl Schemas {
    /// The response object for `status` of an operation: the exact code, else its range
    /// (`4XX`), else `default`. Panics when the status is not documented at all.
    fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let responses = &self.doc["paths"][path][method]["responses"];
        assert!(
            responses.is_object(),
            "{} {path} is in the document",
            method.to_uppercase()
        );
        [status.to_string(), format!("{}XX", status / 100), "default".to_owned()]
            .iter()
            .find_map(|key| responses.get(key))
            .unwrap_or_else(|| {
                panic!(
                    "{} {path}: status {status} is documented (it lists {:?})",
                    method.to_uppercase(),
                    responses.as_object().map(|o| o.keys().collect::<Vec<_>>())
                )
            })
    }

    /// A validator for a JSON schema of this document (refs resolve against its components).
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let wrapped = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&wrapped)
            .unwrap_or_else(|e| panic!("schema {schema} compiles: {e}"))
    }

    /// A validator for a named component schema.
    pub(crate) fn component(&self, name: &str) -> jsonschema::Validator {
        assert!(
            self.doc["components"]["schemas"][name].is_object(),
            "component {name} exists"
        );
        self.validator(&json!({ "$ref": format!("#/components/schemas/{name}") }))
    }

    /// Checks a real answer against what the document declares for it: the status is
    /// documented, the content type is one it declares, and a JSON body matches its schema.
    #[track_caller]
    pub(crate) fn check(&self, method: &str, path: &str, answer: &Answer) {
        let what = format!("{} {path} -> {}", method.to_uppercase(), answer.status);
        let response = self.response(method, path, answer.status);
        let content = response.get("content").and_then(Value::as_object);
        let Some(content) = content.filter(|c| !c.is_empty()) else {
            assert!(
                answer.text.is_empty(),
                "{what}: documented without a body, answered {:?}",
                answer.text
            );
            return;
        };
        let media = answer
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let declared = content.get(&media).unwrap_or_else(|| {
            panic!(
                "{what}: content type {media} is declared (declared: {:?})",
                content.keys().collect::<Vec<_>>()
            )
        });
        if media == "application/json" {
            let body: Value =
                serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("{what}: body is JSON: {e}"));
            let schema = declared.get("schema").expect("a JSON response has a schema");
            let validator = self.validator(schema);
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{what}: body does not match its schema {schema}:\n{}\nbody: {body}",
                errors.join("\n")
            );
        }
    }
}
