//! The Rust client: the generated tonic client, with the API key sent on every
//! call. The integration tests use it.

use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;

pub use crate::proto::v1 as pb;
pub use crate::proto::v1::webhook_service_client::WebhookServiceClient;

/// A client whose every call carries `authorization: Bearer <key>`.
pub type Client = WebhookServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Adds the API key to each request.
#[derive(Clone)]
pub struct BearerAuth(MetadataValue<Ascii>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Connects to `address` (e.g. `http://127.0.0.1:50051`) as the holder of `key`.
pub async fn connect(address: impl Into<String>, key: &str) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(address.into())?.connect().await?;
    let auth = BearerAuth(format!("Bearer {key}").parse()?);
    Ok(WebhookServiceClient::with_interceptor(channel, auth))
}
