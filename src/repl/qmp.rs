//! QMP at the REPL: `{"execute": NAME, "arguments": {...}}` as QMP has it, or the shorter
//! `NAME [json arguments]`.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::commands::Invocation;
use super::parse::split_word;

/// `{"execute": NAME, "arguments": {...}}`, or `NAME [json arguments]`.
fn qmp_request(text: &str) -> Result<(String, Value)> {
    let text = text.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).context("the QMP command is not JSON")?;
        let name = v
            .get("execute")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("a QMP command needs \"execute\": {v}"))?;
        if let Some(other) = v
            .as_object()
            .and_then(|o| o.keys().find(|k| !["execute", "arguments"].contains(&k.as_str())))
        {
            bail!("a QMP command has \"execute\" and \"arguments\", not {other:?}");
        }
        return Ok((name.to_string(), v.get("arguments").cloned().unwrap_or(Value::Null)));
    }
    let (name, args) = split_word(text);
    let args = if args.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(args).context("QMP arguments are not JSON")?
    };
    Ok((name.to_string(), args))
}

pub(super) async fn qmp(c: &Invocation) -> Result<String> {
    let (name, args) = qmp_request(&c.text)?;
    let reply = c.machine().qmp_raw(&name, args).await?;
    Ok(serde_json::to_string_pretty(&reply)?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn qmp_commands_take_both_forms() {
        assert_eq!(
            qmp_request(r#"{"execute": "query-status"}"#).unwrap(),
            ("query-status".to_string(), Value::Null)
        );
        assert_eq!(
            qmp_request(r#"{"execute": "set_link", "arguments": {"name": "n", "up": false}}"#)
                .unwrap()
                .1,
            json!({"name": "n", "up": false})
        );
        assert_eq!(
            qmp_request(r#"set_link {"name": "n", "up": true}"#).unwrap(),
            ("set_link".to_string(), json!({"name": "n", "up": true}))
        );
        assert_eq!(qmp_request("query-status").unwrap(), ("query-status".to_string(), Value::Null));
        assert!(qmp_request(r#"{"arguments": {}}"#).is_err());
        assert!(qmp_request(r#"{"execute": "x", "id": 1}"#).is_err());
        assert!(qmp_request("x {").is_err());
    }
}
