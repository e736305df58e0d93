//! The fuzz input's format (see the module above): RPC kinds, steps, and reading them back.

use std::time::Duration;

/// Session ids that inputs pick from; more than [`MAX_SESSIONS`], so the limit is reached.
pub const SESSIONS: [&str; 6] = ["call-0", "call-1", "call-2", "call-3", "call-4", "call-5"];
pub const SPEECHES: [&str; 3] = ["SP-A", "SP-B", "SP-C"];

/// An RPC, as its kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Rpc {
    OpenSession = 0,
    EndCall = 1,
    OnSpeechCreated = 2,
    OnSpeechDone = 3,
    OnSessionClose = 4,
    WatchSession = 5,
    GetTool = 6,
    GetSession = 7,
    /// Its own kind byte, [`USER_SPEECH`]: see below.
    OnUserSpeech = USER_SPEECH,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::OpenSession => "OpenSession",
            Rpc::EndCall => "EndCall",
            Rpc::OnSpeechCreated => "OnSpeechCreated",
            Rpc::OnSpeechDone => "OnSpeechDone",
            Rpc::OnSessionClose => "OnSessionClose",
            Rpc::WatchSession => "WatchSession",
            Rpc::GetTool => "GetTool",
            Rpc::GetSession => "GetSession",
            Rpc::OnUserSpeech => "OnUserSpeech",
        }
    }
}

pub(super) const ADVANCE: u8 = 8;
/// The kind byte of `OnUserSpeech`, the one kind added after the corpus was first grown. Every
/// other byte keeps its meaning (`kind % KINDS`); this one meant an advance, and no file of
/// the committed corpus had a step with it, so each of them still means what it meant.
pub(super) const USER_SPEECH: u8 = 0xE0;
/// `ids` bit 6 on a WatchSession step: drop a stream instead of opening one.
pub(super) const DROP_STREAM: u8 = 1 << 6;
pub(super) const KINDS: u8 = 9;

/// A step, for building inputs (seeds, structured tests) that [`run`] reads back.
#[derive(Clone, Debug)]
pub enum Step {
    Rpc { rpc: Rpc, ids: u8, message: Vec<u8> },
    Advance(u8),
}

impl Step {
    /// An RPC on `SESSIONS[session]`, speech `SPEECHES[speech]`, close reason folded.
    pub fn on(rpc: Rpc, session: u8, speech: u8, message: &impl prost::Message) -> Self {
        assert!(usize::from(session) < SESSIONS.len() && usize::from(speech) < SPEECHES.len());
        Step::Rpc {
            rpc,
            ids: session | (speech << 3) | (1 << 5),
            message: message.encode_to_vec(),
        }
    }

    /// The client of `SESSIONS[session]`'s oldest open watch stream goes away (the worker's
    /// lease lapses once none is left).
    pub fn drop_stream(session: u8) -> Self {
        assert!(usize::from(session) < SESSIONS.len());
        Step::Rpc {
            rpc: Rpc::WatchSession,
            ids: session | DROP_STREAM,
            message: Vec::new(),
        }
    }

    /// An RPC whose ids are the decoded ones.
    pub fn raw(rpc: Rpc, message: &impl prost::Message) -> Self {
        Step::Rpc {
            rpc,
            ids: 6 | (3 << 3),
            message: message.encode_to_vec(),
        }
    }

    /// Advances the clock by about `d` (100 ms steps up to 12.7 s, whole seconds beyond).
    pub fn advance(d: Duration) -> Self {
        let ms = d.as_millis();
        Step::Advance(if ms < 12_800 {
            (ms / 100) as u8
        } else {
            128 + d.as_secs().min(127) as u8
        })
    }
}

/// The bytes that [`run`] reads as `steps`.
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Advance(b) => out.extend([ADVANCE, *b]),
            Step::Rpc { rpc, ids, message } => {
                out.extend([*rpc as u8, *ids]);
                if message.len() < 64 {
                    out.push(message.len() as u8);
                } else {
                    let len = u16::try_from(message.len()).expect("a message under 64 KiB");
                    out.push(0xF8);
                    out.extend(len.to_le_bytes());
                }
                out.extend_from_slice(message);
            }
        }
    }
    out
}

pub(super) fn advance_by(b: u8) -> Duration {
    if b < 128 {
        Duration::from_millis(u64::from(b) * 100)
    } else {
        Duration::from_secs(u64::from(b - 128))
    }
}

/// The RPC of a kind byte that is not an advance.
pub(super) fn rpc(byte: u8) -> Rpc {
    if byte == USER_SPEECH {
        return Rpc::OnUserSpeech;
    }
    match byte % KINDS {
        0 => Rpc::OpenSession,
        1 => Rpc::EndCall,
        2 => Rpc::OnSpeechCreated,
        3 => Rpc::OnSpeechDone,
        4 => Rpc::OnSessionClose,
        5 => Rpc::WatchSession,
        6 => Rpc::GetTool,
        _ => Rpc::GetSession,
    }
}

pub(super) struct Input<'a>(pub(super) &'a [u8]);

impl Input<'_> {
    pub(super) fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    pub(super) fn len(&mut self) -> Option<usize> {
        let b = self.byte()?;
        if b < 0xF8 {
            return Some(usize::from(b % 64));
        }
        let lo = self.byte()?;
        let hi = self.byte()?;
        Some(usize::from(u16::from_le_bytes([lo, hi])))
    }

    /// Up to `len` bytes: a truncated last message is still a message.
    pub(super) fn take(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}
