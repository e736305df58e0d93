//! The `end_call` tool definition, served by `GetTool` so every worker registers the same tool.

/// The tool's name, as the LLM sees it.
pub const NAME: &str = "end_call";

/// Our description of the tool for the LLM: when to call it, when not to, and that it is final.
pub const DESCRIPTION: &str = "\
End the call and hang up.

Use it when the user has clearly finished, for example when they say goodbye or that they \
need nothing more.

Do not use it when the user asks to wait, to hold, or to be transferred, or when you are \
unsure what they want.

Calling it is the last thing you do: the conversation cannot continue afterwards, so write \
nothing else when you call it.";

/// The tool takes no arguments.
pub const PARAMETERS_JSON_SCHEMA: &str = r#"{"type":"object","properties":{},"required":[]}"#;

/// The description with the session's extra text appended on a line of its own.
pub fn description(extra: &str) -> String {
    if extra.is_empty() {
        DESCRIPTION.to_owned()
    } else {
        format!("{DESCRIPTION}\n{extra}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_description_is_appended() {
        assert_eq!(description(""), DESCRIPTION);
        assert!(description("Only for billing calls.").ends_with("\nOnly for billing calls."));
    }

    #[test]
    fn schema_is_an_object_without_properties() {
        let schema: serde_json::Value = serde_json::from_str(PARAMETERS_JSON_SCHEMA).unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"], serde_json::json!({}));
    }
}
