"""Upload: log exports (any platform, any number, compressed or not) and an identity mapping, into the store.

The files go through `ingest.pipeline.ingest` exactly as on the command line: one transaction, so a failed
ingest leaves the store as it was. A file that is not a log export is reported by name and the others still
load. After an ingest the query cache moves to the new data version, so every page shows the new data.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.components import (
    csv_download,
    fmt_int,
    load_demo_button,
    page_header,
    page_link,
    table,
)
from dashboard.context import get_store, invalidate, query
from ingest.pipeline import IngestReport, ingest, rejected_reasons, timezones
from ingest.store import StoreError
from queries.overview import ingest_history, store_counts
from queries.summary import quarantine

_REPORT = "tt_upload_report"
_NONCE = "tt_upload_nonce"  # part of the uploaders' keys: a new value empties them after an ingest
REPORT_COLUMNS = {
    "path": "file",
    "format": "detected format",
    "records": "records",
    "new_deliveries": "new deliveries",
    "duplicate_deliveries": "already stored",
    "rejected": "rejected",
    "untimed": "untimed",
    "error": "error",
    "note": "note",
}


def render() -> None:
    page_header("Upload", subtitle="Load Tyk notification log exports and an identity mapping")
    counts = query(store_counts)
    _store_figures(counts)

    nonce = st.session_state.setdefault(_NONCE, 0)
    left, right = st.columns([3, 2])
    with left:
        logs = st.file_uploader(
            "Log exports",
            accept_multiple_files=True,
            key=f"upload_logs_{nonce}",
            help="Any log platform's export of your receiver's log: JSON Lines, JSON (Loki, Elasticsearch, "
            "CloudWatch, Datadog, Grafana...), CSV/TSV, plain text lines; gzip, zip or tar. Uploading the same "
            "records twice adds nothing.",
        )
    with right:
        ids = st.file_uploader(
            "Identity mapping (optional)",
            type=["csv"],
            key=f"upload_ids_{nonce}",
            help="A CSV with a header row: an auth-code column (auth_code or code) and a user column "
            "(user_id, user, sub, identity, username or alias). It names the users of the chains.",
        )
        zone = st.selectbox(
            "Times without a zone are in",
            _zones(),
            key="upload_timezone",
            help="Some exports write local times with no zone (Kibana's and Splunk's CSVs use the browser's zone). "
            "Times with a zone or an offset, and epoch numbers, are read exactly whatever this says.",
        )
    go = st.button("Ingest", type="primary", icon=":material/input:", disabled=not (logs or ids))
    if go:
        _ingest(logs or [], ids, zone)

    report = st.session_state.get(_REPORT)
    if report is not None:
        _show_report(report)

    with st.expander(
        f"Quarantine: records that could not be read ({fmt_int(counts['rejected'])})",
        expanded=bool(report and any(f.rejected for f in report.files)),
    ):
        rows = pd.DataFrame(query(quarantine, 1000), columns=["file", "record_no", "reason", "excerpt"])
        if rows.empty:
            st.caption("Nothing quarantined.")
        else:
            st.caption("Token-like values in the excerpts are masked. First 1,000 records by file and line.")
            table(rows, file_name="tokentrail-quarantine.csv")

    with st.expander("Ingest history"):
        hist = query(ingest_history)
        if hist.empty:
            st.caption("Nothing ingested yet.")
        else:
            table(hist.assign(error=hist["error"].fillna("")), file_name="tokentrail-ingest-history.csv",
                  column_config={
                      "run_id": st.column_config.NumberColumn("run", format="%d"),
                      "started_at": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                      **{c: st.column_config.Column(label) for c, label in REPORT_COLUMNS.items() if c in hist.columns},
                      "already_stored": st.column_config.NumberColumn("already stored"),
                  })

    if not counts["deliveries"]:
        st.divider()
        st.markdown(
            "No data of your own at hand? Load a simulated fleet: five days, 150 users, with lost "
            "notifications, retries and forks."
        )
        load_demo_button(key="upload-demo")


def _store_figures(counts: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("Deliveries stored", fmt_int(counts["deliveries"]))
    cols[1].metric("Events", fmt_int(counts["events"]))
    cols[2].metric("Chains", fmt_int(counts["chains"]))
    cols[3].metric("Rejected records", fmt_int(counts["rejected"]))
    cols[4].metric("Mapped auth codes", fmt_int(counts["mapped_auth_codes"]))


@st.cache_data(show_spinner=False)
def _zones() -> list[str]:
    return timezones()


def _ingest(logs: list, ids, zone: str = "UTC") -> None:
    bar = st.progress(0.0, text="Starting...")
    last = [-1.0]

    def progress(what: str, done: int, total: int) -> None:
        frac = min(1.0, done / total) if total else 1.0
        if frac - last[0] >= 0.01 or frac >= 1.0:  # at most ~100 updates to the browser
            last[0] = frac
            bar.progress(frac, text=f"{what} ({frac:.0%})")

    try:
        report = ingest(
            get_store(),
            [(f.name, f) for f in logs],
            identities=(ids.name, ids) if ids is not None else None,
            progress=progress,
            timezone=zone,
        )
    except StoreError as e:
        bar.empty()
        st.error(f"Nothing was loaded: {e}", icon=":material/error:")
        return
    except Exception as e:  # the user gets the reason; the ingest transaction rolled back
        bar.empty()
        names = ", ".join(f.name for f in logs) or (ids.name if ids else "")
        st.error(
            f"Nothing was loaded from {names}: the ingest failed ({type(e).__name__}: {e}). The database is "
            "unchanged.",
            icon=":material/error:",
        )
        return
    bar.progress(1.0, text=f"Done in {report.seconds:.1f} s")
    invalidate()
    st.session_state[_REPORT] = report
    st.session_state[_NONCE] += 1
    st.rerun()


def _show_report(report: IngestReport) -> None:
    files = pd.DataFrame(
        [{REPORT_COLUMNS[k]: getattr(f, k) for k in REPORT_COLUMNS} for f in report.files],
        columns=list(REPORT_COLUMNS.values()),
    )
    files[["detected format", "error", "note"]] = files[["detected format", "error", "note"]].fillna("")
    if not files["note"].any():
        files = files.drop(columns="note")
    new = int(files["new deliveries"].sum()) if not files.empty else 0
    known = int(files["already stored"].sum()) if not files.empty else 0
    rejected = int(files["rejected"].sum()) if not files.empty else 0
    if report.files:
        st.success(
            f"Ingest run {report.run_id}: {fmt_int(new)} new deliveries, {fmt_int(known)} already stored, "
            f"{fmt_int(rejected)} rejected, from {len(report.files)} file(s) in {report.seconds:.1f} s.",
            icon=":material/check_circle:",
        )
    for f in report.files:
        if f.error:
            st.error(f.error if f.path in f.error else f"{f.path}: {f.error}", icon=":material/error:")
        if f.rejected:
            st.warning(f"{f.path}: {fmt_int(f.rejected)} record{'' if f.rejected == 1 else 's'} rejected. {rejected_reasons(f)}. "
                       "They are kept in the quarantine below.", icon=":material/report:")
        if f.unreadable_times:
            st.warning(
                f"{f.path}: {fmt_int(f.unreadable_times)} records had a time that could not be read; "
                "they count as untimed."
            )
        if f.zoneless_times:
            read_as = (
                "were read as UTC. If the export wrote local times, load it into a fresh database with the zone "
                "picked above."
                if report.timezone == "UTC"
                else f"were read as {report.timezone}."
            )
            st.info(f"{f.path}: {fmt_int(f.zoneless_times)} times were written without a zone and {read_as}",
                    icon=":material/schedule:")
    if report.identities is not None:
        r = report.identities
        if r.error:
            st.error(r.error, icon=":material/error:")
        else:
            skipped = (
                f"; rows skipped (empty code or user) at lines {r.rejected_lines[:10]}"
                if r.rejected_lines
                else ""
            )
            read_as = " (not UTF-8: read as Windows-1252, as Excel saves CSV)" if r.encoding == "windows-1252" else ""
            st.success(
                f"Identity mapping {r.path}: {fmt_int(r.mapped)} auth codes mapped{read_as}{skipped}.",
                icon=":material/badge:",
            )
    if not files.empty:
        st.dataframe(files, hide_index=True, width="stretch")
        csv_download(files, "tokentrail-ingest-report.csv", label="Download the report")
    if new:
        page_link("overview", "See the overview")


render()
