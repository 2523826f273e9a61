//! `govbridge.directory.v1.Directory`: members, services, allowed methods,
//! service descriptors. Like reflection, each answers only about what the
//! caller may call: the services it may call a method of, the members that
//! provide them (and itself). The registry is not a list for anyone to
//! read.

use tonic::{Request, Response, Status};

use super::LocalContext;
use crate::proto::directory::v1::{
    AllowedMethod, AllowedMethodsRequest, AllowedMethodsResponse, GetServiceDescriptorRequest,
    GetServiceDescriptorResponse, ListMembersRequest, ListMembersResponse, ListServicesRequest,
    ListServicesResponse, Member, Service, directory_server::Directory,
};

#[derive(Debug, Clone, Copy)]
pub struct DirectoryService;

#[tonic::async_trait]
impl Directory for DirectoryService {
    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        let state = &context.state;
        let callable: std::collections::BTreeSet<_> = state
            .policy()
            .permits(&context.caller, context.certificate_days_left)
            .into_iter()
            .map(|permit| permit.provider)
            .collect();
        let members = state
            .registry()
            .values()
            .filter(|member| member.id == context.caller || callable.contains(&member.id))
            .map(|member| Member {
                id: member.id.to_string(),
                name: member.name.clone(),
                groups: member.groups.clone(),
                provider: state.is_provider(&member.id),
            })
            .collect();
        Ok(Response::new(ListMembersResponse { members }))
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        let catalog = context.state.catalog();
        let known = catalog.service_methods();
        let visible = context.visible_services();
        let services = context
            .state
            .services()
            .iter()
            .filter(|(name, _)| visible.contains(*name))
            .map(|(name, providers)| {
                let mut methods: Vec<String> =
                    known.get(name).into_iter().flatten().cloned().collect();
                methods.sort();
                Service {
                    name: name.clone(),
                    providers: providers.iter().map(ToString::to_string).collect(),
                    methods,
                }
            })
            .collect();
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn allowed_methods(
        &self,
        request: Request<AllowedMethodsRequest>,
    ) -> Result<Response<AllowedMethodsResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        let methods = context
            .state
            .policy()
            .permits(&context.caller, context.certificate_days_left)
            .into_iter()
            .map(|permit| AllowedMethod {
                method: permit.method,
                provider: permit.provider.to_string(),
                purposes: permit.purposes,
                purposes_with_consent: permit.purposes_with_consent,
            })
            .collect();
        Ok(Response::new(AllowedMethodsResponse {
            member: context.caller.to_string(),
            methods,
        }))
    }

    async fn get_service_descriptor(
        &self,
        request: Request<GetServiceDescriptorRequest>,
    ) -> Result<Response<GetServiceDescriptorResponse>, Status> {
        let context = LocalContext::from_request(&request)?;
        let service = &request.get_ref().service;
        // Like reflection: only what the caller may call.
        let visible = context.visible_services().contains(service);
        let set = visible
            .then(|| context.state.catalog().descriptors().service_set(service))
            .flatten()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "service {service} is not published on this gateway, or not to you"
                ))
            })?;
        let openapi = super::openapi(
            context.state.policy(),
            context.state.catalog(),
            &context.caller,
            context.certificate_days_left,
            (Some(service), &context.json_local_services()),
            None,
        );
        Ok(Response::new(GetServiceDescriptorResponse {
            file_descriptor_set: set,
            openapi: openapi.to_string(),
        }))
    }
}
