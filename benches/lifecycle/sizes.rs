//! The sizes of the state machine's types that every session holds (always printed).

use endcall_sidecar::contract::{domain, machine};

use crate::Report;

pub(crate) fn run(report: &mut Report) {
    report.row(
        "sizes",
        "size_of Session / IssuedDirective / TimelineEntry",
        format!(
            "{} / {} / {} bytes",
            std::mem::size_of::<machine::Session>(),
            std::mem::size_of::<domain::IssuedDirective>(),
            std::mem::size_of::<machine::TimelineEntry>()
        ),
    );
}
