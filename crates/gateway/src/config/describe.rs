//! The effective configuration, described for operators.

use super::Config;

impl Config {
    /// The effective configuration as JSON: every setting and path, never
    /// key material. Without `with_members`, the member registry and the
    /// per-member limits are replaced by their count: who is registered, in
    /// which groups, is for operators.
    pub fn describe(&self, with_members: bool) -> String {
        serde_json::to_string_pretty(&self.description(with_members)).unwrap_or_default()
    }

    /// [`Config::describe`], as a JSON value.
    fn description(&self, with_members: bool) -> serde_json::Value {
        let config = self;
        let path = |path: &std::path::Path| path.display().to_string();
        let mut value = serde_json::json!({
            "source": path(&config.source),
            "gateway": {
                "node_id": config.gateway.node_id,
                "listen": config.gateway.listen.to_string(),
                "admin": config.gateway.admin.map(|admin| admin.to_string()),
                "admin_token_file": config.gateway.admin_token_file.as_deref().map(path),
                "admin_tls": config.gateway.admin_tls,
                "identity": config.gateway.identity.to_string(),
                "tls": {
                    "certificate": path(&config.gateway.tls.certificate),
                    "private_key": "(redacted)",
                    "client_ca": path(&config.gateway.tls.client_ca),
                    "crls": config.gateway.tls.crls.iter().map(|crl| path(crl)).collect::<Vec<_>>(),
                    "crl_grace_ms": config.gateway.tls.crl_grace.as_millis(),
                },
                "handshake_timeout_ms": config.gateway.listener.handshake_timeout.as_millis(),
                "max_concurrent_streams": config.gateway.listener.max_concurrent_streams,
                "max_header_list_size": config.gateway.listener.max_header_list_size,
                "max_pending_accept_reset_streams": config.gateway.listener.max_pending_accept_reset_streams,
                "max_local_error_reset_streams": config.gateway.listener.max_local_error_reset_streams,
                "keepalive_interval_ms": config.gateway.listener.keepalive_interval.as_millis(),
                "keepalive_timeout_ms": config.gateway.listener.keepalive_timeout.as_millis(),
                "idle_timeout_ms": config.gateway.listener.idle_timeout.as_millis(),
                "max_connection_age_ms": config.gateway.listener.max_connection_age.as_millis(),
                "drain_timeout_ms": config.gateway.listener.drain_timeout.as_millis(),
                "max_connections_per_address": config.gateway.listener.max_connections_per_address,
                "max_handshakes": config.gateway.listener.max_handshakes,
            },
            "upstream": {
                "certificate": path(&config.upstream.tls.certificate),
                "private_key": "(redacted)",
                "server_ca": path(&config.upstream.tls.server_ca),
                "crls": config.upstream.tls.crls.iter().map(|crl| path(crl)).collect::<Vec<_>>(),
                "crl_grace_ms": config.upstream.tls.crl_grace.as_millis(),
                "connect_timeout_ms": config.upstream.connect_timeout.as_millis(),
                "max_deadline_ms": config.upstream.max_deadline.as_millis(),
                "health_check_interval_ms": config.upstream.pool.health_check_interval.map(|interval| interval.as_millis()),
                "health_check_timeout_ms": config.upstream.pool.health_check_timeout.as_millis(),
                "unhealthy_threshold": config.upstream.pool.unhealthy_threshold,
                "healthy_threshold": config.upstream.pool.healthy_threshold,
                "ejection_failures": config.upstream.pool.ejection_failures,
                "ejection_time_ms": config.upstream.pool.ejection_time.as_millis(),
                "max_ejection_time_ms": config.upstream.pool.max_ejection_time.as_millis(),
                "connections_per_endpoint": config.upstream.pool.connections_per_endpoint,
                "streams_per_connection": config.upstream.pool.streams_per_connection,
            },
            "members": config.members.values().map(|member| serde_json::json!({
                "id": member.id.to_string(),
                "name": member.name,
                "groups": member.groups,
            })).collect::<Vec<_>>(),
            "providers": config.providers.values().map(|provider| serde_json::json!({
                "id": provider.id.to_string(),
                "endpoints": provider.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tls_names": provider.endpoints.iter().map(|endpoint| endpoint.server_name.to_str().into_owned()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "services": config.services.values().map(|service| serde_json::json!({
                "name": service.name,
                "providers": service.providers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "max_deadline_ms": service.max_deadline.map(|deadline| deadline.as_millis()),
                "idempotent": service.idempotent,
            })).collect::<Vec<_>>(),
            "purposes": config.purposes.keys().collect::<Vec<_>>(),
            "policy": {
                "schema": path(&config.policy.schema),
                "policies": path(&config.policy.policies),
            },
            "exchange_log": {
                "enabled": config.exchange_log.enabled,
                "data_dir": path(&config.exchange_log.data_dir),
                "origin": config.exchange_log.origin,
                "checkpoint_interval_ms": config.exchange_log.checkpoint_interval.as_millis(),
                "checkpoint_records": config.exchange_log.checkpoint_records,
                "witness_refresh_s": config.exchange_log.witness_refresh.as_secs(),
                "retain_s": config.exchange_log.retain.map(|retain| retain.as_secs()),
                "archive_dir": path(&config.exchange_log.archive_dir),
                "data_tracker_clients": config.exchange_log.data_tracker_clients.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
            "limits": {
                "gateway_concurrent_calls": config.limits.gateway_concurrent_calls,
                "members": config.limits.members.iter().map(|(member, limits)| serde_json::json!({
                    "id": member.to_string(),
                    "requests_per_second": limits.rate.map(|rate| rate.per_second),
                    "burst": limits.rate.map(|rate| rate.burst),
                    "concurrent_calls": limits.concurrent_calls,
                    "max_message_bytes": limits.max_message_bytes,
                })).collect::<Vec<_>>(),
            },
        });
        if !with_members {
            value["members"] = format!(
                "(hidden: {} members; send the admin token, or `{}` on loopback)",
                config.members.len(),
                crate::wire::headers::OPERATOR_HEADER
            )
            .into();
            value["limits"]["members"] = format!(
                "(hidden: {} members with their own limits)",
                config.limits.members.len()
            )
            .into();
            value["exchange_log"]["data_tracker_clients"] = "(hidden)".into();
        }
        value
    }

    /// What must be the same on every node of a fleet, hashed (SHA-256,
    /// hex): members and groups, providers, services (their providers,
    /// deadline and idempotent methods), purposes, limits,
    /// and the exchange log's Data Tracker clients. Node-local settings
    /// (node id, addresses, files, timeouts, and the log's origin while each
    /// node keeps a log of its own) are left out, as are the policies
    /// (`PolicyEngine::fingerprint`).
    pub fn fleet_fingerprint(&self) -> String {
        let described = self.description(true);
        let shared = serde_json::json!({
            "members": described["members"],
            "providers": self.providers.keys().map(ToString::to_string).collect::<Vec<_>>(),
            "services": described["services"],
            "purposes": described["purposes"],
            "limits": described["limits"],
            "data_tracker_clients": described["exchange_log"]["data_tracker_clients"],
        });
        crate::keys::sha256_hex(shared.to_string().as_bytes())
    }
}
