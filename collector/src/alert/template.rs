//! A webhook's body template (MiniJinja: Jinja2's syntax), rendered from the webhook payload,
//! so one sink kind speaks to Discord, Microsoft Teams, Mattermost and the like. Nothing is
//! escaped on its own: a JSON template writes `{{ summary | tojson }}`. With a JSON content
//! type (the default) the rendered body must parse as JSON, or the notification is skipped
//! and counted as refused, naming the fault.

use super::SinkConfig;

/// Longest body a template may make.
pub const MAX_BODY: usize = 256 * 1024;

/// A compiled template.
pub struct Template {
    env: minijinja::Environment<'static>,
    json: bool,
}

impl Template {
    /// The sink's template, compiled; `None` when it has none.
    pub fn of(cfg: &SinkConfig) -> Result<Option<Template>, String> {
        let source = match (&cfg.template, &cfg.template_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|e| format!("template_file {}: {e}", path.display()))?
            }
            (None, None) => return Ok(None),
        };
        let json = cfg.content_type.as_deref().is_none_or(|c| c.contains("json"));
        Template::new(source, json).map(Some)
    }

    pub fn new(source: String, json: bool) -> Result<Template, String> {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned("body", source).map_err(|e| format!("template: {e:#}"))?;
        Ok(Template { env, json })
    }

    /// The body for one payload.
    pub fn render(&self, payload: &serde_json::Value) -> Result<Vec<u8>, String> {
        let t = self.env.get_template("body").map_err(|e| e.to_string())?;
        let out = t.render(minijinja::Value::from_serialize(payload)).map_err(|e| format!("template: {e:#}"))?;
        if out.len() > MAX_BODY {
            return Err(format!("template: the body is {} bytes, more than {MAX_BODY}", out.len()));
        }
        if self.json
            && let Err(e) = serde_json::from_str::<serde_json::Value>(&out)
        {
            return Err(format!("template: the body is not JSON ({e}); use `| tojson` for values"));
        }
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The templates the README and `examples/templates` ship render valid JSON, for a wave
    /// and for one event, with text a person reads.
    #[test]
    fn shipped_templates_render_valid_json() {
        let event = |region: &str| {
            serde_json::json!({"id": "7", "block_id": format!("openai/{region}/7"), "region": region,
                "agent_id": null, "onset": "2026-01-01T00:00:00Z", "detected_at": "2026-01-01T00:05:00Z",
                "summary": format!("openai blocked in {region}: 403 \"unsupported_country\""),
                "evidence": {"signature": "geo"}, "link": "http://127.0.0.1/v1/events?after=6&limit=1"})
        };
        let payload = |regions: &[&str]| {
            serde_json::json!({"schema": "blockwatch.alert.v1", "id": "7", "kind": "block_started",
                "severity": "critical", "target": "openai", "regions": regions,
                "onset": "2026-01-01T00:00:00Z", "detected_at": "2026-01-01T00:05:00Z",
                "summary": "openai is blocked in 2 regions: hk, cn", "link": "http://127.0.0.1/x", "test": false,
                "events": regions.iter().map(|r| event(r)).collect::<Vec<_>>()})
        };
        for (name, source) in [
            ("discord", include_str!("../../../examples/templates/discord.json.j2")),
            ("teams", include_str!("../../../examples/templates/teams.json.j2")),
            ("mattermost", include_str!("../../../examples/templates/mattermost.json.j2")),
        ] {
            let t = Template::new(source.to_string(), true).unwrap_or_else(|e| panic!("{name}: {e}"));
            for regions in [&["hk", "cn"][..], &["hk"][..]] {
                let body = t.render(&payload(regions)).unwrap_or_else(|e| panic!("{name}: {e}"));
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let text = v.to_string();
                assert!(text.contains("openai") && text.contains("hk"), "{name}: {text}");
            }
        }
    }

    #[test]
    fn a_template_that_makes_no_json_is_refused_naming_the_fault() {
        let t = Template::new("{\"text\": \"{{ summary }}\"}".into(), true).unwrap();
        let err = t.render(&serde_json::json!({"summary": "say \"hi\""})).unwrap_err();
        assert!(err.contains("not JSON") && err.contains("tojson"), "{err}");
        let t = Template::new("{{ nope }}".into(), false).unwrap();
        assert!(t.render(&serde_json::json!({})).unwrap_err().contains("undefined"));
        assert!(Template::new("{% if %}".into(), true).is_err(), "a syntax error is found at load");
    }
}
