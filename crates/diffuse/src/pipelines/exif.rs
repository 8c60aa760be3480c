//! The EXIF block AUTOMATIC1111 writes into JPEG and WebP images: the parameters text as the Exif IFD's
//! `UserComment`, "UNICODE\0" and UTF-16BE, in a big-endian TIFF structure laid out byte for byte as piexif's
//! `dump` lays it out; and the reader for it (either byte order, ASCII or Unicode comments).

/// `ExifIFDPointer` in IFD0.
const EXIF_IFD_POINTER: u16 = 0x8769;
/// `UserComment` in the Exif IFD.
const USER_COMMENT: u16 = 0x9286;
/// The character-code prefixes of a `UserComment` (EXIF 2.3, table 9).
const UNICODE_PREFIX: &[u8; 8] = b"UNICODE\0";
const ASCII_PREFIX: &[u8; 8] = b"ASCII\0\0\0";

/// A TIFF structure holding `text` as the Exif `UserComment` (what follows "Exif\0\0" in a JPEG's APP1).
pub(crate) fn user_comment_tiff(text: &str) -> Vec<u8> {
    let mut comment = UNICODE_PREFIX.to_vec();
    comment.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    let exif_ifd: u32 = 8 + 2 + 12 + 4;
    let data: u32 = exif_ifd + 2 + 12;
    let mut tiff = b"MM\0\x2a".to_vec();
    tiff.extend(8u32.to_be_bytes());
    // IFD0: one entry, the Exif IFD's offset (LONG), and no next IFD.
    tiff.extend(1u16.to_be_bytes());
    tiff.extend(EXIF_IFD_POINTER.to_be_bytes());
    tiff.extend(4u16.to_be_bytes());
    tiff.extend(1u32.to_be_bytes());
    tiff.extend(exif_ifd.to_be_bytes());
    tiff.extend(0u32.to_be_bytes());
    // The Exif IFD: one entry, the comment (UNDEFINED), its bytes right after.
    tiff.extend(1u16.to_be_bytes());
    tiff.extend(USER_COMMENT.to_be_bytes());
    tiff.extend(7u16.to_be_bytes());
    tiff.extend((comment.len() as u32).to_be_bytes());
    tiff.extend(data.to_be_bytes());
    tiff.extend(comment);
    tiff
}

/// The `UserComment` of a TIFF structure (with or without a leading "Exif\0\0"), if it has one.
pub(crate) fn user_comment(tiff: &[u8]) -> Option<String> {
    let tiff = tiff.strip_prefix(b"Exif\0\0").unwrap_or(tiff);
    let big = match tiff.get(..4)? {
        b"MM\0\x2a" => true,
        b"II\x2a\0" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at + 2)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    // (count, value or offset) of `tag` in the IFD at `ifd`.
    let entry = |ifd: usize, tag: u16| -> Option<(usize, usize)> {
        let n = u16_at(ifd)? as usize;
        (0..n).map(|i| ifd + 2 + 12 * i).find_map(|at| {
            (u16_at(at)? == tag).then_some((u32_at(at + 4)? as usize, u32_at(at + 8)? as usize))
        })
    };
    let (_, exif_ifd) = entry(u32_at(4)? as usize, EXIF_IFD_POINTER)?;
    let (count, offset) = entry(exif_ifd, USER_COMMENT)?;
    // A comment has an 8-byte prefix, so it never fits in the entry itself.
    if count <= 4 {
        return None;
    }
    let bytes = tiff.get(offset..offset.checked_add(count)?)?;
    let (prefix, body) = bytes.split_at(8.min(bytes.len()));
    if prefix == UNICODE_PREFIX {
        // piexif writes UTF-16BE whatever the TIFF's byte order.
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        Some(String::from_utf16_lossy(&units))
    } else if prefix == ASCII_PREFIX {
        Some(String::from_utf8_lossy(body).into_owned())
    } else {
        Some(
            String::from_utf8_lossy(bytes)
                .trim_matches('\0')
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piexif_layout_and_round_trip() {
        // piexif.dump({"Exif": {UserComment: UserComment.dump("ab", encoding="unicode")}}) minus "Exif\0\0".
        let piexif =
            "4d4d002a00000008000187690004000000010000001a000000000001928600070000000c00000028\
                      554e49434f44450000610062";
        let ours: String = user_comment_tiff("ab")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ours, piexif);
        let text = "a castle\nSteps: 20, Sampler: Euler a, Seed: 1 — «ü»";
        assert_eq!(
            user_comment(&user_comment_tiff(text)).as_deref(),
            Some(text)
        );
        assert_eq!(user_comment(b"not a tiff"), None);
    }
}
