//! Path templates of `google.api.http` rules: `/v1/persons/{nin}`,
//! `/v1/accounts:verify-holder`, `/v1/files/{name=**}`.
//!
//! A segment is a literal, `*` (one segment), `**` (the rest of the path)
//! or a variable naming a request field, `{field}` or `{field=*}` (one
//! segment) or `{field=**}` (the rest); the last segment may end in a
//! `:verb`. Variables with longer sub-templates (`{name=shelves/*}`) are
//! not supported: the rule is then refused with a reason.

use std::fmt;

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    verb: Option<String>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: any one segment, bound to nothing.
    Any,
    /// `**`: the rest of the path, bound to nothing.
    Rest,
    /// A request field, dot-separated, bound to one segment or the rest.
    Variable {
        field: String,
        rest: bool,
    },
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template `{template}`: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let error = |reason| TemplateError {
            template: text.to_owned(),
            reason,
        };
        let path = text
            .strip_prefix('/')
            .ok_or(error("it must start with `/`"))?;
        // The verb follows the last `:` outside a variable.
        let (path, verb) = match path.rfind(':') {
            Some(at) if !path[at..].contains('}') && !path[at..].contains('/') => {
                (&path[..at], Some(path[at + 1..].to_owned()))
            }
            _ => (path, None),
        };
        if verb.as_deref() == Some("") {
            return Err(error("its verb is empty"));
        }
        let mut segments = Vec::new();
        for part in path.split('/') {
            let segment = match part {
                "" => return Err(error("it has an empty segment")),
                "*" => Segment::Any,
                "**" => Segment::Rest,
                variable if variable.starts_with('{') => {
                    let inner = variable
                        .strip_prefix('{')
                        .and_then(|v| v.strip_suffix('}'))
                        .ok_or(error("a variable must be one whole segment, `{field}`"))?;
                    let (field, rest) = match inner.split_once('=') {
                        None | Some((_, "*")) => (inner.split('=').next().unwrap_or(inner), false),
                        Some((field, "**")) => (field, true),
                        Some(_) => {
                            return Err(error(
                                "only `{field}`, `{field=*}` and `{field=**}` variables are supported",
                            ));
                        }
                    };
                    let valid = !field.is_empty()
                        && field.split('.').all(|part| {
                            !part.is_empty()
                                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        });
                    if !valid {
                        return Err(error("a variable must name a field, `{field}` or `{a.b}`"));
                    }
                    Segment::Variable {
                        field: field.to_owned(),
                        rest,
                    }
                }
                literal => {
                    if literal.contains(['{', '}', '*']) {
                        return Err(error("a literal segment holds `{`, `}` or `*`"));
                    }
                    Segment::Literal(literal.to_owned())
                }
            };
            segments.push(segment);
        }
        let rest_at = segments
            .iter()
            .position(|s| matches!(s, Segment::Rest | Segment::Variable { rest: true, .. }));
        if rest_at.is_some_and(|at| at + 1 != segments.len()) {
            return Err(error("`**` may only be the last segment"));
        }
        Ok(Self {
            segments,
            verb,
            text: text.to_owned(),
        })
    }

    /// What the template matches, its variables' names aside: two
    /// templates of one shape match the same paths.
    pub fn shape(&self) -> String {
        let mut shape = String::new();
        for segment in &self.segments {
            shape.push('/');
            match segment {
                Segment::Literal(literal) => shape.push_str(literal),
                Segment::Any | Segment::Variable { rest: false, .. } => shape.push('*'),
                Segment::Rest | Segment::Variable { rest: true, .. } => shape.push_str("**"),
            }
        }
        if let Some(verb) = &self.verb {
            shape.push(':');
            shape.push_str(verb);
        }
        shape
    }

    /// Whether some request path matches both templates.
    pub fn overlaps(&self, other: &Template) -> bool {
        match (&self.verb, &other.verb) {
            (Some(verb), Some(other_verb)) => {
                verb == other_verb && unify(&self.segments, &other.segments, None)
            }
            (None, None) => unify(&self.segments, &other.segments, None),
            // A template without a verb takes it as part of its last segment.
            (Some(verb), None) => unify(&self.segments, &other.segments, Some(verb)),
            (None, Some(verb)) => unify(&other.segments, &self.segments, Some(verb)),
        }
    }

    /// The fields the template binds, in order.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable { field, .. } => Some(field.as_str()),
            _ => None,
        })
    }

    /// Matches a request path (without its query), returning each bound
    /// field and its percent-decoded value; `None` if the path does not
    /// match, `Some(Err(field))` if it does but `field`'s value is not
    /// UTF-8 once percent-decoded (replaced, it would reach the backend
    /// altered).
    pub fn matches(&self, path: &str) -> Option<Result<Vec<(String, String)>, String>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path
                .strip_suffix(verb.as_str())
                .and_then(|p| p.strip_suffix(':'))?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        // Decoded once the whole path matches.
        let mut bound: Vec<(&String, &[&str])> = Vec::new();
        let mut at = 0;
        for segment in &self.segments {
            match segment {
                Segment::Rest | Segment::Variable { rest: true, .. } => {
                    let rest = parts.get(at..)?;
                    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
                        return None;
                    }
                    if let Segment::Variable { field, .. } = segment {
                        bound.push((field, rest));
                    }
                    at = parts.len();
                }
                Segment::Literal(literal) => {
                    if parts.get(at)? != literal {
                        return None;
                    }
                    at += 1;
                }
                Segment::Any => {
                    if parts.get(at)?.is_empty() {
                        return None;
                    }
                    at += 1;
                }
                Segment::Variable { field, .. } => {
                    let part = parts.get(at)?;
                    if part.is_empty() {
                        return None;
                    }
                    bound.push((field, std::slice::from_ref(part)));
                    at += 1;
                }
            }
        }
        if at != parts.len() {
            return None;
        }
        let decoded = bound.into_iter().map(|(field, parts)| {
            let value = parts
                .iter()
                .map(|part| decode(part))
                .collect::<Option<Vec<_>>>();
            value
                .map(|value| (field.clone(), value.join("/")))
                .ok_or_else(|| field.clone())
        });
        Some(decoded.collect())
    }

    /// The template in OpenAPI's form: `/v1/persons/{nin}`, with the verb.
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::Any => path.push('*'),
                Segment::Rest => path.push_str("**"),
                Segment::Variable { field, .. } => {
                    path.push('{');
                    path.push_str(field);
                    path.push('}');
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Segment {
    /// `**` or `{field=**}`: one segment or more, to the path's end.
    fn is_rest(&self) -> bool {
        matches!(self, Self::Rest | Self::Variable { rest: true, .. })
    }
}

/// Whether some path's segments match both `a` and `b`, as
/// [`Template::matches`] matches them. With `verb`, the path's last
/// segment is what `a`'s last matches followed by `:verb`, which `b`
/// (without a verb) matches as part of that segment.
fn unify(a: &[Segment], b: &[Segment], verb: Option<&str>) -> bool {
    // Whether `b`'s last segment can be one that ends with the verb.
    let takes_verb = |last: &Segment| match (last, verb) {
        (Segment::Literal(literal), Some(verb)) => literal
            .strip_suffix(verb)
            .and_then(|rest| rest.strip_suffix(':'))
            .is_some_and(|rest| !rest.is_empty()),
        _ => true,
    };
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        // `a`'s rest takes all of `b`'s segments, the verb after them.
        (Some((first, _)), Some(_)) if first.is_rest() => b.last().is_some_and(takes_verb),
        // `b`'s rest takes what `a`'s segments match, the verb included.
        (Some(_), Some((first, _))) if first.is_rest() => true,
        (Some((x, a_after)), Some((y, b_after))) => {
            let last = a_after.is_empty();
            let meet = match (x, y) {
                (Segment::Literal(x), Segment::Literal(y)) => match verb {
                    Some(verb) if last => *y == format!("{x}:{verb}"),
                    _ => x == y,
                },
                (_, Segment::Literal(_)) if last => takes_verb(y),
                _ => true,
            };
            meet && unify(a_after, b_after, verb)
        }
    }
}

/// Percent-decodes one path segment; `None` when it is not UTF-8.
fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template)
            .expect("a valid template")
            .matches(path)
            .map(|bound| bound.expect("UTF-8 values"))
    }

    /// A path that matches, but with a value that is not UTF-8 once
    /// decoded, says which field: the call is refused as a bad request,
    /// not as a path no route has.
    #[test]
    fn names_the_variable_that_is_not_utf8() {
        let matched = |template: &str, path: &str| {
            Template::parse(template)
                .expect("a valid template")
                .matches(path)
        };
        assert_eq!(
            matched("/v1/persons/{nin}", "/v1/persons/%E9"),
            Some(Err("nin".to_owned()))
        );
        assert_eq!(
            matched("/v1/files/{name=**}", "/v1/files/a/%FF/c"),
            Some(Err("name".to_owned()))
        );
        assert_eq!(matched("/v1/persons/{nin}", "/v1/people/%E9"), None);
    }

    #[test]
    fn binds_variables_and_verbs() {
        assert_eq!(
            bound("/v1/persons/{nin}", "/v1/persons/1234567890123"),
            Some(vec![("nin".into(), "1234567890123".into())])
        );
        assert_eq!(bound("/v1/persons/{nin}", "/v1/persons/1/x"), None);
        assert_eq!(bound("/v1/persons/{nin}", "/v1/persons/"), None);
        assert_eq!(
            bound("/v1/persons/{nin}:verify", "/v1/persons/12:verify"),
            Some(vec![("nin".into(), "12".into())])
        );
        assert_eq!(bound("/v1/persons/{nin}:verify", "/v1/persons/12"), None);
        assert_eq!(
            bound("/v1/a/{b.c}/d/{e}", "/v1/a/x%20y/d/%C3%A9"),
            Some(vec![("b.c".into(), "x y".into()), ("e".into(), "é".into())])
        );
        assert_eq!(
            bound("/v1/files/{name=**}", "/v1/files/a/b/c"),
            Some(vec![("name".into(), "a/b/c".into())])
        );
        assert_eq!(bound("/v1/*/x", "/v1/anything/x"), Some(vec![]));
        assert_eq!(bound("/v1/x", "/v1/x/"), None);
    }

    #[test]
    fn refuses_what_it_cannot_match() {
        for template in [
            "v1/x",
            "/v1//x",
            "/v1/{name=shelves/*}",
            "/v1/**/x",
            "/v1/{}",
            "/v1/x{y}",
            "/v1/x:",
        ] {
            assert!(Template::parse(template).is_err(), "{template}");
        }
        assert_eq!(
            Template::parse("/v1/{a}:b").expect("valid").openapi_path(),
            "/v1/{a}:b"
        );
        let shape = |text| Template::parse(text).expect("valid").shape();
        assert_eq!(shape("/v1/persons/{id}"), shape("/v1/persons/{nin}"));
        assert_eq!(shape("/v1/persons/{id}"), shape("/v1/persons/*"));
        assert_ne!(shape("/v1/persons/{id}"), shape("/v1/persons/{id}:x"));
    }

    /// `overlaps` says what matching says, over every path of a few
    /// segments and a verb.
    #[test]
    fn templates_overlap_exactly_where_a_path_matches_both() {
        let templates = [
            "/v1/persons/{nin}",
            "/v1/persons/{nin}:verify",
            "/v1/persons/{nin}/consents",
            "/v1/{ninea=**}",
            "/v1/{ninea=**}:verify",
            "/v1/*/consents",
            "/v1/persons",
            "/v1/persons:verify",
            "/v1/a:verify",
            "/v1/**",
            "/v2/persons/{nin}",
        ];
        let parts = [
            "v1",
            "v2",
            "persons",
            "consents",
            "a",
            "persons:verify",
            "a:verify",
        ];
        let mut paths = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..4 {
            paths = paths
                .iter()
                .flat_map(|path| parts.iter().map(move |part| format!("{path}/{part}")))
                .collect();
            all.extend(paths.iter().cloned());
        }
        for a in templates {
            for b in templates {
                let (ta, tb) = (Template::parse(a).unwrap(), Template::parse(b).unwrap());
                let witness = all
                    .iter()
                    .find(|path| ta.matches(path).is_some() && tb.matches(path).is_some());
                assert_eq!(
                    ta.overlaps(&tb),
                    witness.is_some(),
                    "{a} and {b}: a path matching both is {witness:?}"
                );
            }
        }
    }
}
