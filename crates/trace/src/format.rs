//! tracefs `format` files: an event's id and where each of its fields sits
//! in a record. Offsets differ between kernels, so they are read, never
//! assumed.

use crate::TraceError;

/// One field of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Bytes from the start of the record.
    pub offset: usize,
    /// Bytes.
    pub size: usize,
}

/// A parsed `format` file (or `events/header_page`, which has fields but
/// no name or id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// `name:`; empty for the page header.
    pub name: String,
    /// `ID:`, the `common_type` every record of this event starts with.
    pub id: Option<u16>,
    fields: Vec<(String, Field)>,
}

impl Format {
    /// Parses the text of a `format` file; `what` names it in errors.
    pub fn parse(what: &str, text: &str) -> Result<Format, TraceError> {
        let mut format = Format {
            name: String::new(),
            id: None,
            fields: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let bad = |detail: &str| TraceError::Format {
                what: what.to_string(),
                line: i + 1,
                detail: detail.to_string(),
            };
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                format.name = name.trim().to_string();
            } else if let Some(id) = line.strip_prefix("ID:") {
                format.id = Some(id.trim().parse().map_err(|_| bad("ID is not a number"))?);
            } else if line.starts_with("field:") {
                let (name, field) =
                    parse_field(line).ok_or_else(|| bad("unreadable field line"))?;
                format.fields.push((name, field));
            }
        }
        if format.fields.is_empty() {
            return Err(TraceError::Format {
                what: what.to_string(),
                line: 0,
                detail: "no field lines".into(),
            });
        }
        Ok(format)
    }

    /// The field called `name`, or an error naming the event and field.
    pub fn field(&self, name: &str) -> Result<Field, TraceError> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| TraceError::MissingField {
                event: self.name.clone(),
                field: name.to_string(),
            })
    }
}

/// `field:const void * skaddr; offset:8; size:8; signed:0;`
fn parse_field(line: &str) -> Option<(String, Field)> {
    let mut parts = line.split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let name = decl.rsplit([' ', '*']).next()?;
    let name = name.split('[').next()?.to_string();
    let mut offset = None;
    let mut size = None;
    for p in parts {
        if let Some(v) = p.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    (!name.is_empty()).then_some(())?;
    Some((
        name,
        Field {
            offset: offset?,
            size: size?,
        },
    ))
}

/// Reads an unsigned field of 1, 2, 4 or 8 bytes (host byte order, as the
/// kernel wrote it); `None` if the record is too short.
pub(crate) fn read_u64(record: &[u8], f: Field) -> Option<u64> {
    let b = record.get(f.offset..f.offset.checked_add(f.size)?)?;
    Some(match f.size {
        1 => u64::from(b[0]),
        2 => u64::from(u16::from_ne_bytes(b.try_into().ok()?)),
        4 => u64::from(u32::from_ne_bytes(b.try_into().ok()?)),
        8 => u64::from_ne_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// The bytes of an array field (addresses).
pub(crate) fn read_bytes(record: &[u8], f: Field) -> Option<&[u8]> {
    record.get(f.offset..f.offset.checked_add(f.size)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SET_STATE: &str = include_str!("../testdata/inet_sock_set_state.format");

    #[test]
    fn reads_name_id_and_fields_of_a_real_format_file() {
        let f = Format::parse("inet_sock_set_state", SET_STATE).unwrap();
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, Some(2287));
        assert_eq!(f.field("skaddr").unwrap(), Field { offset: 8, size: 8 });
        assert_eq!(
            f.field("daddr_v6").unwrap(),
            Field {
                offset: 56,
                size: 16
            }
        );
        assert_eq!(f.field("common_pid").unwrap(), Field { offset: 4, size: 4 });
        let e = f.field("nope").unwrap_err().to_string();
        assert!(
            e.contains("inet_sock_set_state") && e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_id_names_the_line() {
        let e = Format::parse("x/format", "name: x\nID: twelve\n").unwrap_err();
        assert_eq!(e.to_string(), "x/format:2: ID is not a number");
    }
}
