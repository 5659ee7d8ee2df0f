//! Who may do what on a broker: principals, API tokens and grants (the
//! broker's AccessControl service), [`Access::who_am_i`] and
//! [`Access::check_access`]. Every call but those two needs `admin:auth` on
//! `cluster`. No retries: a failed
//! call says why.

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::access_control_client::AccessControlClient;

use crate::{Connection, Result, Secret};

/// The AccessControl operations.
#[derive(Debug, Clone)]
pub struct Access {
    client: AccessControlClient<Connection>,
}

impl Access {
    /// Uses an existing connection (its token or client certificate is
    /// the caller).
    pub fn from_channel(channel: Connection) -> Self {
        Self { client: AccessControlClient::new(channel) }
    }

    /// Who the connection's credentials name, and its grants.
    pub async fn who_am_i(&self) -> Result<pb::WhoAmIResponse> {
        Ok(self.client.clone().who_am_i(pb::WhoAmIRequest {}).await?.into_inner())
    }

    /// Whether the connection's caller may do `action` (`record:put`) on
    /// `resource` (`stream:<name>`, `group:<stream>/<group>` or `cluster`)
    /// now, by the rule the broker authorizes every call with.
    pub async fn check_access(&self, action: &str, resource: &str) -> Result<pb::CheckAccessResponse> {
        let req = pb::CheckAccessRequest { action: action.into(), resource: resource.into() };
        Ok(self.client.clone().check_access(req).await?.into_inner())
    }

    /// [`Access::check_access`] for the caller that `token` names instead
    /// of the connection's: a service asks the broker about its own caller
    /// by forwarding the caller's token, so it needs no privilege of its own.
    /// A bad, expired or revoked token is [`crate::Error::Unauthenticated`].
    pub async fn check_access_as(
        &self,
        token: &Secret,
        action: &str,
        resource: &str,
    ) -> Result<pb::CheckAccessResponse> {
        let mut req = tonic::Request::new(pb::CheckAccessRequest { action: action.into(), resource: resource.into() });
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {}", token.expose())
            .parse()
            .map_err(|_| crate::Error::InvalidArgument("token: must be printable ASCII".into()))?;
        value.set_sensitive(true);
        req.metadata_mut().insert("authorization", value);
        Ok(self.client.clone().check_access(req).await?.into_inner())
    }

    /// Creates a principal.
    pub async fn create_principal(&self, name: &str, description: &str) -> Result<pb::Principal> {
        let req = pb::CreatePrincipalRequest { name: name.into(), description: description.into() };
        Ok(self.client.clone().create_principal(req).await?.into_inner().principal.unwrap_or_default())
    }

    /// Deletes a principal with its tokens and grants; how many of each went.
    pub async fn delete_principal(&self, name: &str) -> Result<(u32, u32)> {
        let r = self.client.clone().delete_principal(pb::DeletePrincipalRequest { name: name.into() }).await?;
        let r = r.into_inner();
        Ok((r.tokens_removed, r.grants_removed))
    }

    /// Every principal.
    pub async fn list_principals(&self) -> Result<Vec<pb::Principal>> {
        Ok(self.client.clone().list_principals(pb::ListPrincipalsRequest {}).await?.into_inner().principals)
    }

    /// A new token for `principal`, valid for `ttl` (`None`: no expiry).
    /// The token is returned this once; the broker keeps only its hash.
    pub async fn create_token(
        &self,
        principal: &str,
        description: &str,
        ttl: Option<Duration>,
    ) -> Result<(pb::TokenInfo, Secret)> {
        let ttl_ms = ttl.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        let req = pb::CreateTokenRequest { principal: principal.into(), description: description.into(), ttl_ms };
        let r = self.client.clone().create_token(req).await?.into_inner();
        Ok((r.info.unwrap_or_default(), Secret::new(r.token)))
    }

    /// Revokes a token by id; its calls end within the broker's re-check interval.
    pub async fn revoke_token(&self, id: &str) -> Result<pb::TokenInfo> {
        let r = self.client.clone().revoke_token(pb::RevokeTokenRequest { id: id.into() }).await?;
        Ok(r.into_inner().info.unwrap_or_default())
    }

    /// Tokens of one principal or all (without the tokens themselves).
    pub async fn list_tokens(&self, principal: Option<&str>) -> Result<Vec<pb::TokenInfo>> {
        let req = pb::ListTokensRequest { principal: principal.unwrap_or_default().into() };
        Ok(self.client.clone().list_tokens(req).await?.into_inner().tokens)
    }

    /// Adds a grant; false when it existed.
    pub async fn add_grant(&self, grant: pb::Grant) -> Result<bool> {
        Ok(self.client.clone().add_grant(pb::AddGrantRequest { grant: Some(grant) }).await?.into_inner().added)
    }

    /// Removes a grant; false when there was none.
    pub async fn remove_grant(&self, grant: pb::Grant) -> Result<bool> {
        Ok(self.client.clone().remove_grant(pb::RemoveGrantRequest { grant: Some(grant) }).await?.into_inner().removed)
    }

    /// Grants of one principal or all.
    pub async fn list_grants(&self, principal: Option<&str>) -> Result<Vec<pb::Grant>> {
        let req = pb::ListGrantsRequest { principal: principal.unwrap_or_default().into() };
        Ok(self.client.clone().list_grants(req).await?.into_inner().grants)
    }
}

/// An allow grant of `action` on `resource` to `principal`.
pub fn allow(principal: &str, action: &str, resource: &str) -> pb::Grant {
    pb::Grant {
        principal: principal.into(),
        effect: pb::Effect::Allow as i32,
        action: action.into(),
        resource: resource.into(),
    }
}

/// A deny grant, which wins over every allow.
pub fn deny(principal: &str, action: &str, resource: &str) -> pb::Grant {
    pb::Grant { effect: pb::Effect::Deny as i32, ..allow(principal, action, resource) }
}
