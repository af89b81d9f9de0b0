//! Azure Blob settings from the storage account's connection string
//! (`ConnectionStrings__AvatarsStorage`, written to Key Vault by Terraform).
//!
//! Why the account key rather than a managed identity: SAS URLs for browser uploads are
//! signed with it (a service SAS), which needs no extra round trip per URL; object_store
//! signs them (`Signer`) with the same key it uses for its own requests.

/// Where the avatars container is and how to sign for it.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureBlobSettings {
    pub account: String,
    /// The account key (base64), as in the connection string.
    pub access_key: String,
    pub container: String,
    /// The Blob service URL when it is not `https://{account}.blob.core.windows.net`
    /// (`BlobEndpoint=`, another cloud's `EndpointSuffix=`, a local stand-in).
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for AzureBlobSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobSettings")
            .field("account", &self.account)
            .field("access_key", &"<hidden>")
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl AzureBlobSettings {
    /// Parses `DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=...`
    /// (optionally with `BlobEndpoint=...`). The error says what is missing, never the key.
    pub fn from_connection_string(raw: &str, container: &str) -> Result<Self, String> {
        let (mut account, mut key, mut protocol, mut suffix, mut blob_endpoint) =
            (None, None, None, None, None);
        for pair in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            // Keys end in `=` padding, so split at the first `=` only.
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| "expected Name=Value pairs separated by `;`".to_string())?;
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "accountname" => account = Some(value),
                "accountkey" => key = Some(value),
                "defaultendpointsprotocol" => protocol = Some(value),
                "endpointsuffix" => suffix = Some(value),
                "blobendpoint" => blob_endpoint = Some(value.trim_end_matches('/').to_string()),
                // Queue, table and file endpoints, SAS tokens: not what avatars use.
                _ => {}
            }
        }
        let account = account
            .filter(|a| !a.is_empty())
            .ok_or("the connection string has no AccountName")?;
        let access_key = key.filter(|k| !k.is_empty()).ok_or(
            "the connection string has no AccountKey (a SAS-only string cannot sign upload URLs)",
        )?;
        let container = container.trim();
        if container.is_empty() {
            return Err("the avatars container name is empty".into());
        }
        let endpoint = match (blob_endpoint, suffix.as_deref()) {
            (Some(url), _) => Some(url),
            (None, None | Some("core.windows.net")) => None,
            (None, Some(suffix)) => Some(format!(
                "{}://{account}.blob.{suffix}",
                protocol.as_deref().unwrap_or("https")
            )),
        };
        Ok(Self {
            account,
            access_key,
            container: container.to_string(),
            endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_portal_form_of_the_connection_string() {
        let s = AzureBlobSettings::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=devteachinavatars;AccountKey=bXkta2V5LXdpdGgtcGFkZGluZw==;EndpointSuffix=core.windows.net",
            "avatars",
        )
        .unwrap();
        assert_eq!(s.account, "devteachinavatars");
        assert_eq!(s.access_key, "bXkta2V5LXdpdGgtcGFkZGluZw==");
        assert_eq!(s.container, "avatars");
        assert_eq!(s.endpoint, None);
        assert!(!format!("{s:?}").contains("bXkta2V5"));
    }

    #[test]
    fn honours_an_explicit_blob_endpoint_or_another_cloud() {
        let s = AzureBlobSettings::from_connection_string(
            "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/",
            "avatars",
        )
        .unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        let s = AzureBlobSettings::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn",
            "avatars",
        )
        .unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("https://a.blob.core.chinacloudapi.cn")
        );
    }

    #[test]
    fn says_what_is_missing() {
        let e = AzureBlobSettings::from_connection_string("AccountName=a", "avatars").unwrap_err();
        assert!(e.contains("AccountKey"), "{e}");
        let e = AzureBlobSettings::from_connection_string("AccountKey=k", "avatars").unwrap_err();
        assert!(e.contains("AccountName"), "{e}");
        let e = AzureBlobSettings::from_connection_string("garbage", "avatars").unwrap_err();
        assert!(e.contains("Name=Value"), "{e}");
        let e = AzureBlobSettings::from_connection_string("AccountName=a;AccountKey=k", " ")
            .unwrap_err();
        assert!(e.contains("container"), "{e}");
    }
}
