//! gRPC server reflection, v1 and v1alpha, showing each caller only the
//! services it may call (and the gateway's own) and the files they need.

use std::collections::BTreeSet;
use std::pin::Pin;

use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

use super::LocalContext;
use crate::catalog::Catalog;

/// What one caller may see, of the catalog of the configuration its call
/// started under.
struct View {
    catalog: std::sync::Arc<Catalog>,
    services: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl View {
    fn of(context: &LocalContext) -> Self {
        let catalog = std::sync::Arc::clone(context.state.catalog());
        let index = catalog.descriptors();
        let services = context.visible_services();
        let files = services
            .iter()
            .filter_map(|service| index.file_of_service(service))
            .flat_map(|file| index.closure(file))
            .collect();
        Self {
            catalog,
            services,
            files,
        }
    }

    fn files_from(&self, file: Option<&str>, what: &str) -> MessageResponse {
        let index = self.catalog.descriptors();
        match file.filter(|file| self.files.contains(*file)) {
            Some(file) => MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse {
                file_descriptor_proto: index.encoded(&index.closure(file)),
            }),
            None => not_found(what),
        }
    }

    fn answer(&self, request: &v1::ServerReflectionRequest) -> v1::ServerReflectionResponse {
        let index = self.catalog.descriptors();
        let message = match &request.message_request {
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => self.files_from(
                index.has_file(name).then_some(name.as_str()),
                &format!("file {name}"),
            ),
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                self.files_from(index.file_of_symbol(symbol), &format!("symbol {symbol}"))
            }
            Some(MessageRequest::FileContainingExtension(extension)) => not_found(&format!(
                "extension {} of {}",
                extension.extension_number, extension.containing_type
            )),
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                not_found(&format!("extensions of {name}"))
            }
            None => MessageResponse::ErrorResponse(v1::ErrorResponse {
                error_code: tonic::Code::InvalidArgument as i32,
                error_message: "empty reflection request".to_owned(),
            }),
        };
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request.clone()),
            message_response: Some(message),
        }
    }
}

fn not_found(what: &str) -> MessageResponse {
    MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: tonic::Code::NotFound as i32,
        error_message: format!("{what} not found"),
    })
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers a stream of reflection requests, converting from and to the
/// wire-compatible message types of a reflection version.
fn serve<Req, Res>(context: &LocalContext, requests: Streaming<Req>) -> ResponseStream<Res>
where
    Req: Message + Default + Send + 'static,
    Res: Message + Default + Send + 'static,
{
    let view = View::of(context);
    let responses = requests.map(move |request| {
        let request = request?;
        // v1 and v1alpha messages are the same on the wire.
        let request = v1::ServerReflectionRequest::decode(request.encode_to_vec().as_slice())
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let response = view.answer(&request);
        Res::decode(response.encode_to_vec().as_slice())
            .map_err(|error| Status::internal(error.to_string()))
    });
    Box::pin(responses)
}

#[derive(Debug, Clone, Copy)]
pub struct ReflectionV1;

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for ReflectionV1 {
    type ServerReflectionInfoStream = ResponseStream<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let context = LocalContext::from_request(&request)?.clone();
        Ok(Response::new(serve(&context, request.into_inner())))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ReflectionV1Alpha;

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for ReflectionV1Alpha {
    type ServerReflectionInfoStream = ResponseStream<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let context = LocalContext::from_request(&request)?.clone();
        Ok(Response::new(serve(&context, request.into_inner())))
    }
}
