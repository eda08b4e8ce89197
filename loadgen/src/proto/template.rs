//! URL and body templates with `{room}`, `{seq}` and `{payload}` placeholders.

/// Longest template accepted (bytes).
pub const TEMPLATE_BYTES_MAX: usize = 64 * 1024;

/// Why a template was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{name}` other than room, seq, payload.
    #[error("unknown placeholder '{{{0}}}' (known: {{room}}, {{seq}}, {{payload}})")]
    UnknownPlaceholder(String),
    /// A `{` without a closing `}`.
    #[error("unclosed '{{' in template")]
    Unclosed,
    /// The template is longer than [`TEMPLATE_BYTES_MAX`].
    #[error("template longer than {TEMPLATE_BYTES_MAX} bytes")]
    TooLong,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Room,
    Seq,
    Payload,
}

/// A parsed template, rendered many times without re-parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `{room}`, `{seq}`, `{payload}` are placeholders, anything else literal.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.len() > TEMPLATE_BYTES_MAX {
            return Err(TemplateError::TooLong);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            let part = match &after[..close] {
                "room" => Part::Room,
                "seq" => Part::Seq,
                "payload" => Part::Payload,
                other => return Err(TemplateError::UnknownPlaceholder(other.to_string())),
            };
            parts.push(part);
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True when the template contains `{seq}` (so it must be rendered per message).
    pub fn uses_seq(&self) -> bool {
        self.parts.contains(&Part::Seq)
    }

    /// True when the template contains `{payload}`.
    pub fn uses_payload(&self) -> bool {
        self.parts.contains(&Part::Payload)
    }

    /// Appends the rendering to `out`.
    pub fn render_into(&self, out: &mut Vec<u8>, room: &str, seq: u64, payload: &[u8]) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Part::Room => out.extend_from_slice(room.as_bytes()),
                Part::Seq => {
                    let mut digits = itoa_buffer();
                    out.extend_from_slice(format_u64(&mut digits, seq));
                }
                Part::Payload => out.extend_from_slice(payload),
            }
        }
    }

    /// Renders to a `String` (for URLs; `payload` is not expected there).
    pub fn render(&self, room: &str, seq: u64) -> String {
        let mut out = Vec::new();
        self.render_into(&mut out, room, seq, b"");
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Scratch space for [`format_u64`].
pub fn itoa_buffer() -> [u8; 20] {
    [0u8; 20]
}

/// Formats `value` in decimal into `buffer` without allocating; returns the digits.
pub fn format_u64(buffer: &mut [u8; 20], mut value: u64) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buffer[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let template = Template::parse("http://h/rooms/{room}/m?s={seq}&p={payload}").unwrap();
        let mut out = Vec::new();
        template.render_into(&mut out, "r7", 42, b"PAY");
        assert_eq!(out, b"http://h/rooms/r7/m?s=42&p=PAY");
        assert!(template.uses_seq());
        assert!(template.uses_payload());
        assert!(!Template::parse("x{room}").unwrap().uses_seq());
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(
            Template::parse("/{rom}"),
            Err(TemplateError::UnknownPlaceholder("rom".into()))
        );
        assert_eq!(Template::parse("/{room"), Err(TemplateError::Unclosed));
    }

    #[test]
    fn formats_numbers() {
        let mut buffer = itoa_buffer();
        assert_eq!(format_u64(&mut buffer, 0), b"0");
        assert_eq!(
            format_u64(&mut buffer, u64::MAX),
            u64::MAX.to_string().as_bytes()
        );
    }
}
