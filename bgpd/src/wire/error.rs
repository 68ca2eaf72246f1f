//! Typed decode errors, one enum per message kind. Each maps to exactly one
//! NOTIFICATION code/subcode ([`DecodeError::notification`]); UPDATE errors
//! also carry the RFC 7606 [`Action`] the decoder took.

use super::notification::{
    Action, ErrorCode, HeaderSubcode, Notification, OpenSubcode, UpdateSubcode, Warning,
};

/// Why a message was refused: the NOTIFICATION to send before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message header: {0}")]
    Header(#[from] HeaderError),
    #[error("OPEN: {0}")]
    Open(#[from] OpenError),
    #[error("UPDATE: {0}")]
    Update(#[from] UpdateError),
}

/// Message Header Error (RFC 4271 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The marker is not all ones.
    #[error("connection not synchronized")]
    ConnectionNotSynchronized,
    /// The Length field (as data) is out of bounds for the type.
    #[error("bad message length {0}")]
    BadMessageLength(u16),
    /// An unknown type octet (as data).
    #[error("bad message type {0}")]
    BadMessageType(u8),
}

/// OPEN Message Error (RFC 4271 6.2; RFC 5492, RFC 6286, RFC 7607).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Fields or optional parameters that do not fit the message.
    #[error("malformed")]
    Malformed,
    /// Not version 4 (data: the highest version we support, 4).
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// My Autonomous System is 0 (RFC 7607 2).
    #[error("bad peer AS")]
    BadPeerAs,
    /// A BGP Identifier of 0 (RFC 6286 2.1).
    #[error("bad BGP identifier")]
    BadBgpIdentifier,
    /// An optional parameter other than Capabilities.
    #[error("unsupported optional parameter {0}")]
    UnsupportedOptionalParameter(u8),
    /// A hold time of 1 or 2 seconds.
    #[error("unacceptable hold time {0}")]
    UnacceptableHoldTime(u16),
    #[error("capability: {0}")]
    Capability(#[from] CapabilityError),
}

/// A capability we interpret, malformed (RFC 5492 3: OPEN error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The capability list ends inside a capability's header or value.
    #[error("truncated")]
    Truncated,
    /// A known capability with the wrong value length.
    #[error("capability {code} with length {len}")]
    BadLength { code: u8, len: u8 },
    /// The 4-octet AS capability carries AS 0 (RFC 6793 9, RFC 7607 2).
    #[error("4-octet AS 0")]
    FourOctetAsZero,
}

/// UPDATE Message Error (RFC 4271 6.3) with what RFC 7606 makes of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}){}", self.subcode.name(), self.action.name(), self.attr.map(|a| format!(", attribute {a}")).unwrap_or_default())]
pub struct UpdateError {
    pub subcode: UpdateSubcode,
    pub action: Action,
    /// Type code of the attribute at fault, when one is.
    pub attr: Option<u8>,
    /// The NOTIFICATION data (RFC 4271 6.3: usually the attribute).
    pub data: Vec<u8>,
}

impl UpdateError {
    /// An error that resets the session.
    pub(crate) fn reset(subcode: UpdateSubcode, data: Vec<u8>) -> UpdateError {
        UpdateError {
            subcode,
            action: Action::SessionReset,
            attr: None,
            data,
        }
    }

    pub fn notification(&self) -> Notification {
        Notification::update(self.subcode, self.data.clone())
    }

    /// The warning reported when the action is not a reset.
    pub fn warning(self) -> Warning {
        Warning {
            action: self.action,
            attr: self.attr,
            error: Notification::update(self.subcode, self.data),
        }
    }
}

impl HeaderError {
    pub fn subcode(&self) -> HeaderSubcode {
        match self {
            HeaderError::ConnectionNotSynchronized => HeaderSubcode::ConnectionNotSynchronized,
            HeaderError::BadMessageLength(_) => HeaderSubcode::BadMessageLength,
            HeaderError::BadMessageType(_) => HeaderSubcode::BadMessageType,
        }
    }

    pub fn notification(&self) -> Notification {
        let data = match *self {
            HeaderError::ConnectionNotSynchronized => Vec::new(),
            HeaderError::BadMessageLength(len) => len.to_be_bytes().to_vec(),
            HeaderError::BadMessageType(ty) => vec![ty],
        };
        Notification::header(self.subcode(), data)
    }
}

impl OpenError {
    pub fn subcode(&self) -> OpenSubcode {
        match self {
            OpenError::Malformed
            | OpenError::Capability(
                CapabilityError::Truncated | CapabilityError::BadLength { .. },
            ) => OpenSubcode::Unspecific,
            OpenError::UnsupportedVersion(_) => OpenSubcode::UnsupportedVersion,
            OpenError::BadPeerAs | OpenError::Capability(CapabilityError::FourOctetAsZero) => {
                OpenSubcode::BadPeerAs
            }
            OpenError::BadBgpIdentifier => OpenSubcode::BadBgpIdentifier,
            OpenError::UnsupportedOptionalParameter(_) => OpenSubcode::UnsupportedOptionalParameter,
            OpenError::UnacceptableHoldTime(_) => OpenSubcode::UnacceptableHoldTime,
        }
    }

    pub fn notification(&self) -> Notification {
        // RFC 4271 6.2: Unsupported Version carries the largest version we
        // support (2 octets); the others carry no data.
        let data = match self {
            OpenError::UnsupportedVersion(_) => vec![0, 4],
            _ => Vec::new(),
        };
        Notification::open(self.subcode(), data)
    }
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Header(_) => ErrorCode::MessageHeader,
            DecodeError::Open(_) => ErrorCode::OpenMessage,
            DecodeError::Update(_) => ErrorCode::UpdateMessage,
        }
    }

    /// The NOTIFICATION to send for this error.
    pub fn notification(&self) -> Notification {
        match self {
            DecodeError::Header(e) => e.notification(),
            DecodeError::Open(e) => e.notification(),
            DecodeError::Update(e) => e.notification(),
        }
    }
}

impl From<DecodeError> for Notification {
    fn from(e: DecodeError) -> Notification {
        e.notification()
    }
}

impl From<HeaderError> for Notification {
    fn from(e: HeaderError) -> Notification {
        e.notification()
    }
}
