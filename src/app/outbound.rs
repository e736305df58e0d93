//! The process's outbound side, built once at start: one HTTP client (one connection pool, TLS
//! roots loaded only if the LiveKit or webhook URL needs them) and what sends through it.

use std::sync::Arc;

use endcall_core::domain::{RoomName, TeardownDone, TeardownResult as Result_};

use crate::{
    app::{
        config::Config,
        server::ServeError,
        teardown::{Deleting, RoomDeleter},
    },
    livekit::{self, RoomService, TeardownAttempt, TeardownResult},
    outbound::{HttpClient, Tls},
    webhooks,
};

/// What the server sends out through.
pub(crate) struct Outbound {
    pub(crate) http: HttpClient,
    /// `None` without LiveKit configuration: teardowns then record `NOT_CONFIGURED`.
    pub(crate) room_service: Option<Arc<dyn RoomDeleter>>,
    /// `None` without `--webhook-url`.
    pub(crate) webhooks: Option<webhooks::Settings>,
}

impl Outbound {
    /// Reads the LiveKit and webhook settings (a bad one refuses the start, naming its flag or
    /// variable) and builds the client they share.
    pub(crate) fn start(config: &Config) -> Result<Self, ServeError> {
        let livekit = livekit::Settings::load(&config.livekit)
            .map_err(|err| ServeError::Outbound(err.to_string()))?;
        let webhooks = webhooks::Settings::load(&config.webhooks)?;
        let urls = livekit
            .iter()
            .map(|settings| &settings.url)
            .chain(webhooks.iter().map(|settings| &settings.url));
        let http = HttpClient::new(Tls::for_urls(urls))
            .map_err(|err| ServeError::Outbound(err.to_string()))?;
        let room_service = RoomService::from_config(livekit.as_ref(), &http)
            .map(|service| Arc::new(service) as Arc<dyn RoomDeleter>);
        Ok(Outbound {
            http,
            room_service,
            webhooks,
        })
    }
}

impl RoomDeleter for RoomService {
    fn delete_room<'a>(&'a self, room: &'a RoomName) -> Deleting<'a> {
        Box::pin(async move {
            let TeardownAttempt { result, attempts } =
                RoomService::delete_room(self, room.as_str()).await;
            let (result, error) = match result {
                TeardownResult::Deleted => (Result_::RoomDeleted, None),
                TeardownResult::AlreadyGone => (Result_::RoomAlreadyGone, None),
                TeardownResult::Failed { error, .. } => (Result_::Failed, Some(error)),
            };
            TeardownDone {
                result,
                attempts,
                error,
            }
        })
    }
}
