//! What a finished command gives back: its `!re` items, with typed getters, and the
//! attributes of its `!done`.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::message::Attributes;

/// One `!re` reply: the properties of one item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Item {
    pub attributes: Attributes,
}

impl Item {
    pub fn new(attributes: Attributes) -> Self {
        Self { attributes }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.attributes.get(key)
    }

    /// The value of `key` as text (`None` when absent or not UTF-8).
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.attributes.get_str(key)
    }

    /// The value of `key` as text, invalid UTF-8 replaced.
    pub fn get_string(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The value of `key`, which must be present and UTF-8.
    pub fn require_str(&self, key: &str) -> Result<&str, Error> {
        match self.get(key) {
            None => Err(Error::MissingProperty(key.to_string())),
            Some(v) => std::str::from_utf8(v).map_err(|_| Error::InvalidProperty {
                key: key.to_string(),
                value: String::from_utf8_lossy(v).into_owned(),
            }),
        }
    }

    /// The `.id` of the item (`*1F`).
    pub fn id(&self) -> Option<&str> {
        self.get_str(".id")
    }

    /// `key` as a boolean: `true`/`false` as the API prints them (`yes`/`no` accepted too).
    /// `Ok(None)` when absent, an error for any other value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, Error> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            b"true" | b"yes" => Ok(Some(true)),
            b"false" | b"no" => Ok(Some(false)),
            _ => Err(self.invalid(key, v)),
        }
    }

    /// `key` as an unsigned integer. `Ok(None)` when absent, an error when not a number.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, Error> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| self.invalid(key, v))
    }

    /// `key` as a comma-separated list (empty when absent or empty).
    pub fn get_list(&self, key: &str) -> Vec<String> {
        split_list(self.get_string(key).as_deref().unwrap_or_default())
    }

    /// All properties as text, for display or lenient parsing.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.attributes
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    fn invalid(&self, key: &str, value: &[u8]) -> Error {
        Error::InvalidProperty {
            key: key.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
        }
    }
}

/// Splits a RouterOS list value (`a,b,c`), dropping empty parts.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Everything a command returned once it finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The `!re` items, in order.
    pub items: Vec<Item>,
    /// The attributes of the final `!done` (empty for `!empty`).
    pub done: Attributes,
}

impl Response {
    /// `=ret=` of the `!done`: the `.id` of an item an `add` made, for one.
    pub fn ret(&self) -> Option<&str> {
        self.done.get_str("ret")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, &str)]) -> Item {
        let mut a = Attributes::default();
        for (k, v) in pairs {
            a.push(k.to_string(), v.to_string());
        }
        Item::new(a)
    }

    #[test]
    fn typed_getters() {
        let it = item(&[
            (".id", "*1A"),
            ("disabled", "true"),
            ("dynamic", "no"),
            ("uptime", "x"),
            ("total-memory", "268435456"),
            ("cpu-load", "abc"),
            ("address", "10.0.0.0/8,,192.168.0.0/16"),
        ]);
        assert_eq!(it.id(), Some("*1A"));
        assert_eq!(it.get_bool("disabled").unwrap(), Some(true));
        assert_eq!(it.get_bool("dynamic").unwrap(), Some(false));
        assert_eq!(it.get_bool("missing").unwrap(), None);
        assert!(matches!(
            it.get_bool("uptime"),
            Err(Error::InvalidProperty { key, value }) if key == "uptime" && value == "x"
        ));
        assert_eq!(it.get_u64("total-memory").unwrap(), Some(268_435_456));
        assert!(it.get_u64("cpu-load").is_err());
        assert_eq!(it.get_list("address"), vec!["10.0.0.0/8", "192.168.0.0/16"]);
        assert!(it.get_list("nothing").is_empty());
        assert!(matches!(it.require_str("name"), Err(Error::MissingProperty(k)) if k == "name"));
    }
}
