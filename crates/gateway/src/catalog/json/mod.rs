//! JSON over HTTPS for partners without gRPC: which method a JSON request
//! calls, and the proto3 JSON mapping of its messages.
//!
//! Every method has its default route, `POST /package.Service/Method` with
//! the request message as the JSON body; a method annotated with
//! `google.api.http` has those routes too (`GET /v1/persons/{nin}`). Both
//! come from the descriptors alone, so a service registered at runtime has
//! its routes without a rebuild. The gateway turns a matched request into
//! the gRPC call it stands for and the answer back into JSON
//! (`crate::proxy`); nothing here touches the network.
//!
//! - [`Routes`]: the route table of a descriptor pool;
//! - [`convert`]: request JSON to protobuf, protobuf to JSON, errors;
//! - [`openapi`]: the OpenAPI 3.1 description of the routes.

pub mod convert;
pub mod openapi;
mod template;

use std::collections::HashMap;

use http::Method;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

pub use template::{Template, TemplateError};

/// The `google.api.http` method option.
const HTTP_OPTION: &str = "google.api.http";

/// What of the request the HTTP body carries.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body: every field not in the path comes from the query.
    Empty,
    /// The whole request message, but the fields bound by the path.
    Whole,
    /// One field of the request message; the others from the query.
    Field(FieldDescriptor),
}

/// One JSON route of a method.
#[derive(Debug, Clone)]
pub struct Route {
    pub verb: Method,
    pub template: Template,
    pub method: MethodDescriptor,
    pub body: BodyRule,
    /// The response field sent as the body; `None`: the whole response.
    pub response_body: Option<FieldDescriptor>,
}

/// A request matched to its method.
#[derive(Debug)]
pub struct Matched<'a> {
    pub method: &'a MethodDescriptor,
    pub body: &'a BodyRule,
    pub response_body: Option<&'a FieldDescriptor>,
    /// Fields bound by the path, with their (decoded) values; `Err(field)`
    /// when `field`'s value is not UTF-8 once decoded (the call is refused
    /// as a bad request once admitted, as a bad query is).
    pub bound: Result<Vec<(String, String)>, String>,
}

/// A `google.api.http` rule that cannot be used: its method keeps its
/// default route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method}: {reason}")]
pub struct RuleError {
    pub method: String,
    pub reason: String,
}

/// The JSON routes of every method of a descriptor pool.
#[derive(Debug, Default)]
pub struct Routes {
    /// The annotated routes, in the order of the services' full names.
    annotated: Vec<Route>,
    /// Every method's default route, by `/package.Service/Method`.
    default: HashMap<String, Route>,
    /// Rules that could not be used, for `check-config` and the log.
    refused: Vec<RuleError>,
    /// Routes of two services that match some of the same requests: a
    /// configuration with any is refused.
    overlapping: Vec<RuleError>,
}

impl Routes {
    /// The routes of every service of `pool`.
    pub fn of(pool: &DescriptorPool) -> Self {
        let option = pool.get_extension_by_name(HTTP_OPTION);
        let mut routes = Routes::default();
        let mut services: Vec<_> = pool.services().collect();
        services.sort_by(|a, b| a.full_name().cmp(b.full_name()));
        for service in services {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let template = Template::parse(&path);
                if let Ok(template) = template {
                    routes.default.insert(
                        path,
                        Route {
                            verb: Method::POST,
                            template,
                            method: method.clone(),
                            body: BodyRule::Whole,
                            response_body: None,
                        },
                    );
                }
                let Some(option) = option.as_ref() else {
                    continue;
                };
                let options = method.options();
                if !options.has_extension(option) {
                    continue;
                }
                let rule = options.get_extension(option);
                let Some(rule) = rule.as_message() else {
                    continue;
                };
                let mut rules = vec![rule.clone()];
                if let Some(more) = rule.get_field_by_name("additional_bindings")
                    && let Some(more) = more.as_list()
                {
                    rules.extend(more.iter().filter_map(|r| r.as_message().cloned()));
                }
                for rule in rules {
                    match route_of(&method, &rule) {
                        Ok(route) => routes.annotated.push(route),
                        Err(reason) => routes.refused.push(RuleError {
                            method: method.full_name().to_owned(),
                            reason,
                        }),
                    }
                }
            }
        }
        routes.drop_clashes();
        routes
    }

    /// Drops every annotated route that matches the same requests as
    /// another method's of its service (`GET /v1/persons/{id}` and `GET
    /// /v1/persons/{nin}`): which method a partner reaches must not depend
    /// on the order of the rules; each keeps its default route. Routes of
    /// one service that overlap (`/v1/persons/{nin}` and
    /// `/v1/persons/{nin}:verify`) are its author's, and the first that
    /// matches a request takes it.
    ///
    /// Routes of two services that match some of the same requests (`GET
    /// /v1/{ninea=**}` takes `GET /v1/persons/1`) are [`Self::overlapping`]:
    /// no service published later may take another's requests, nor
    /// silently drop its routes.
    fn drop_clashes(&mut self) {
        let mut clashes: Vec<Option<(bool, String)>> = vec![None; self.annotated.len()];
        for (at, route) in self.annotated.iter().enumerate() {
            for (other_at, other) in self.annotated.iter().enumerate() {
                if at == other_at || route.verb != other.verb {
                    continue;
                }
                let same = route.template.shape() == other.template.shape();
                let foreign = route.method.parent_service() != other.method.parent_service();
                if (same && !foreign) || (foreign && route.template.overlaps(&other.template)) {
                    let which = if same { "the same" } else { "some of the same" };
                    clashes[at].get_or_insert_with(|| {
                        let reason = format!(
                            "{} {} and {}'s {} {} match {which} requests",
                            route.verb,
                            route.template,
                            other.method.full_name(),
                            other.verb,
                            other.template,
                        );
                        (foreign, reason)
                    });
                }
            }
        }
        let routes = std::mem::take(&mut self.annotated);
        for (route, clash) in routes.into_iter().zip(clashes) {
            let method = route.method.full_name().to_owned();
            match clash {
                None => self.annotated.push(route),
                Some((true, reason)) => self.overlapping.push(RuleError { method, reason }),
                Some((false, reason)) => self.refused.push(RuleError {
                    method,
                    reason: format!("{reason}: neither is used"),
                }),
            }
        }
    }

    /// The method `verb path` calls; `Err` says whether the path is known
    /// under another verb (405) or not at all (404).
    pub fn find(&self, verb: &Method, path: &str) -> Result<Matched<'_>, NoRoute> {
        if *verb == Method::POST
            && let Some(route) = self.default.get(path)
        {
            return Ok(route.matched(Ok(Vec::new())));
        }
        let mut allowed = Vec::new();
        if self.default.contains_key(path) {
            allowed.push(Method::POST);
        }
        for route in &self.annotated {
            if let Some(bound) = route.template.matches(path) {
                if route.verb == *verb {
                    return Ok(route.matched(bound));
                }
                if !allowed.contains(&route.verb) {
                    allowed.push(route.verb.clone());
                }
            }
        }
        if allowed.is_empty() {
            Err(NoRoute::Path)
        } else {
            Err(NoRoute::Verb(allowed))
        }
    }

    /// Every route, the annotated ones first, then the defaults in the
    /// order of their paths.
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        let mut defaults: Vec<&Route> = self.default.values().collect();
        defaults.sort_by_key(|route| route.template.to_string());
        self.annotated.iter().chain(defaults)
    }

    /// Routes of two services that match some of the same requests.
    pub fn overlapping(&self) -> &[RuleError] {
        &self.overlapping
    }

    /// The `google.api.http` rules that could not be used.
    pub fn refused(&self) -> &[RuleError] {
        &self.refused
    }
}

/// Why no route matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No route has this path.
    Path,
    /// Routes have it, for these verbs (an `Allow` header).
    Verb(Vec<Method>),
}

impl Route {
    fn matched(&self, bound: Result<Vec<(String, String)>, String>) -> Matched<'_> {
        Matched {
            method: &self.method,
            body: &self.body,
            response_body: self.response_body.as_ref(),
            bound,
        }
    }
}

/// The route of one `HttpRule`.
fn route_of(
    method: &MethodDescriptor,
    rule: &prost_reflect::DynamicMessage,
) -> Result<Route, String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut pattern = None;
    for (name, verb) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            pattern = Some((verb, text(name)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let field = |name| {
            custom
                .get_field_by_name(name)
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let verb = Method::from_bytes(field("kind").as_bytes())
            .map_err(|_| format!("`{}` is not an HTTP method", field("kind")))?;
        pattern = Some((verb, field("path")));
    }
    let (verb, path) = pattern.ok_or("the rule names no HTTP method and path")?;
    let template = Template::parse(&path).map_err(|error| error.to_string())?;
    let input = method.input();
    for variable in template.variables() {
        let field = field_at(&input, variable)?;
        if field.is_list() || field.is_map() || matches!(field.kind(), Kind::Message(_)) {
            return Err(format!(
                "path variable `{variable}` names a repeated or message field"
            ));
        }
    }
    let body = match text("body").as_str() {
        "" => BodyRule::Empty,
        "*" => BodyRule::Whole,
        name => BodyRule::Field(input.get_field_by_name(name).ok_or(format!(
            "body `{name}` is not a field of {}",
            input.full_name()
        ))?),
    };
    if method.is_client_streaming() && !matches!(body, BodyRule::Whole) {
        return Err("a client-streaming method's route must take the whole body".into());
    }
    let response_body = match text("response_body").as_str() {
        "" => None,
        name => Some(method.output().get_field_by_name(name).ok_or(format!(
            "response_body `{name}` is not a field of {}",
            method.output().full_name()
        ))?),
    };
    Ok(Route {
        verb,
        template,
        method: method.clone(),
        body,
        response_body,
    })
}

/// The field a dotted path names from `message`.
pub fn field_at(message: &MessageDescriptor, path: &str) -> Result<FieldDescriptor, String> {
    let mut message = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = message
            .get_field_by_name(part)
            .or_else(|| message.get_field_by_json_name(part))
            .ok_or_else(|| format!("`{path}` is not a field of {}", message.full_name()))?;
        if parts.peek().is_none() {
            return Ok(field);
        }
        match field.kind() {
            Kind::Message(inner) if !field.is_list() && !field.is_map() => message = inner,
            _ => return Err(format!("`{path}`: `{part}` is not a message field")),
        }
    }
    Err(format!("`{path}` is not a field path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first annotated route of `method` (its full name).
    fn route_of(routes: &Routes, method: &str) -> Route {
        routes
            .annotated
            .iter()
            .find(|route| route.method.full_name() == method)
            .unwrap()
            .clone()
    }

    #[test]
    fn clashing_routes_are_both_dropped_and_said() {
        let pool = crate::catalog::testing::agencies().pool();
        let routes = Routes::of(pool);
        assert!(routes.refused().is_empty(), "{:?}", routes.refused());
        let known = route_of(&routes, "govbridge.business.v1.BusinessRegistry.GetCompany");
        let mut clashing = Routes::of(pool);
        // Another method of its service, with a route of the same shape
        // (`Template::shape` erases variable names: its unit test).
        let mut twin = known.clone();
        twin.method = route_of(
            &routes,
            "govbridge.business.v1.BusinessRegistry.ListDirectors",
        )
        .method;
        clashing.annotated.push(twin);
        clashing.drop_clashes();
        assert_eq!(clashing.refused().len(), 2, "{:?}", clashing.refused());
        assert!(
            clashing.overlapping().is_empty(),
            "{:?}",
            clashing.overlapping()
        );
        assert!(
            clashing
                .find(&known.verb, &known.template.openapi_path())
                .is_err()
        );
    }

    /// Another service's route that would take some of a route's requests
    /// (`GET /v1/{ninea=**}` against CivilRegistry's `GET
    /// /v1/persons/{nin}`): both are said, for the configuration to be
    /// refused, whichever sorts first.
    #[test]
    fn another_services_overlapping_route_takes_nothing() {
        let pool = crate::catalog::testing::agencies().pool();
        let routes = Routes::of(pool);
        let get_person = route_of(
            &routes,
            "govbridge.civilregistry.v1.CivilRegistry.GetPerson",
        );
        let list_directors = route_of(
            &routes,
            "govbridge.business.v1.BusinessRegistry.ListDirectors",
        );
        let mut overlapping = Routes::of(pool);
        let mut wide = list_directors;
        wide.template = Template::parse("/v1/{ninea=**}").unwrap();
        // First, as a service sorting before CivilRegistry would be.
        overlapping.annotated.insert(0, wide);
        overlapping.drop_clashes();
        let refused: Vec<&str> = overlapping
            .overlapping()
            .iter()
            .map(|refused| refused.method.as_str())
            .collect();
        // The wide route, and every other service's GET under /v1/.
        assert_eq!(
            refused[..2],
            [
                "govbridge.business.v1.BusinessRegistry.ListDirectors",
                "govbridge.civilregistry.v1.CivilRegistry.GetPerson"
            ],
            "{refused:?}"
        );
        assert!(
            refused[1..]
                .iter()
                .all(|method| !method.starts_with("govbridge.business.")),
            "{refused:?}"
        );
        assert_eq!(
            overlapping.overlapping()[1].reason,
            "GET /v1/persons/{nin} and govbridge.business.v1.BusinessRegistry.ListDirectors's \
             GET /v1/{ninea=**} match some of the same requests"
        );
        assert!(
            overlapping.refused().is_empty(),
            "{:?}",
            overlapping.refused()
        );
        let path = "/v1/persons/2002196400009";
        assert!(
            get_person
                .template
                .matches(path)
                .is_some_and(|bound| bound.is_ok())
        );
        // Neither annotated route answers; the default routes remain.
        assert!(overlapping.find(&Method::GET, path).is_err());
        // Routes of one service that overlap stay.
        assert!(routes.refused().is_empty(), "{:?}", routes.refused());
    }
}
