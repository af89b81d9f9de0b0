//! What an uploaded avatar really is, read from its first bytes.
//!
//! Why magic bytes: the browser uploads straight to storage, so the `Content-Type` it sent is
//! only a claim. The confirm step reads the file's signature and accepts JPEG, PNG and WebP by
//! what they are, so an HTML page or a script renamed `.png` is never served as an avatar.

/// The image formats an avatar may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
}

/// How many leading bytes [`ImageKind::sniff`] needs.
pub const SNIFF_BYTES: u64 = 12;

impl ImageKind {
    pub const ALL: [ImageKind; 3] = [ImageKind::Jpeg, ImageKind::Png, ImageKind::Webp];

    pub fn content_type(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Webp => "image/webp",
        }
    }

    /// The file extension blobs of this kind get.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
            ImageKind::Webp => "webp",
        }
    }

    /// The kind a `Content-Type` names (parameters and case ignored; `image/jpg` accepted).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "image/jpeg" | "image/jpg" => Some(ImageKind::Jpeg),
            "image/png" => Some(ImageKind::Png),
            "image/webp" => Some(ImageKind::Webp),
            _ => None,
        }
    }

    /// The kind a blob's extension names.
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(ImageKind::Jpeg),
            "png" => Some(ImageKind::Png),
            "webp" => Some(ImageKind::Webp),
            _ => None,
        }
    }

    /// The kind the file's signature shows, if it is one of ours.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
        if head.len() >= 3 && head[..3] == [0xFF, 0xD8, 0xFF] {
            Some(ImageKind::Jpeg)
        } else if head.starts_with(PNG) {
            Some(ImageKind::Png)
        } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            Some(ImageKind::Webp)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_three_formats_by_their_signature() {
        assert_eq!(
            ImageKind::sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]),
            Some(ImageKind::Jpeg)
        );
        assert_eq!(
            ImageKind::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(ImageKind::Png)
        );
        assert_eq!(
            ImageKind::sniff(b"RIFF\x24\0\0\0WEBPVP8 "),
            Some(ImageKind::Webp)
        );
    }

    #[test]
    fn refuses_what_only_claims_to_be_an_image() {
        assert_eq!(ImageKind::sniff(b"<html><script>"), None);
        assert_eq!(ImageKind::sniff(b"GIF89a......"), None);
        // A RIFF container that is not WebP (a WAV file).
        assert_eq!(ImageKind::sniff(b"RIFF\x24\0\0\0WAVEfmt "), None);
        assert_eq!(ImageKind::sniff(b"\x89PN"), None);
        assert_eq!(ImageKind::sniff(&[]), None);
    }

    #[test]
    fn content_types_and_extensions() {
        assert_eq!(
            ImageKind::from_content_type("Image/PNG; charset=binary"),
            Some(ImageKind::Png)
        );
        assert_eq!(
            ImageKind::from_content_type("image/jpg"),
            Some(ImageKind::Jpeg)
        );
        assert_eq!(ImageKind::from_content_type("image/gif"), None);
        assert_eq!(ImageKind::from_content_type("text/html"), None);
        for kind in ImageKind::ALL {
            assert_eq!(ImageKind::from_extension(kind.extension()), Some(kind));
            assert_eq!(
                ImageKind::from_content_type(kind.content_type()),
                Some(kind)
            );
        }
        // The domain's list of accepted types is the same list.
        let ours: Vec<_> = ImageKind::ALL.iter().map(|k| k.content_type()).collect();
        assert_eq!(ours, teachin_domain::user::AVATAR_CONTENT_TYPES.to_vec());
    }
}
