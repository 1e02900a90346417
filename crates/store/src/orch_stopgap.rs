//! Stand-ins for two store methods the orchestrator branch calls but has not committed
//! yet (`append_job_lines`, `has_open_grant_job`), so this branch builds. **Delete this
//! file when merging the orchestrator's store work**: its own versions replace these.

use chrono::{DateTime, Utc};
use domain::JobId;

use crate::Store;
use crate::db::db;
use crate::error::Result;

impl Store {
    /// Appends lines to a job's log, in order.
    pub async fn append_job_lines(
        &self,
        job: JobId,
        lines: &[(DateTime<Utc>, String)],
    ) -> Result<()> {
        for (at, message) in lines {
            self.append_job_line(job, *at, message).await?;
        }
        Ok(())
    }

    /// Whether a grant has an unfinished job whose kind ends with `kind_suffix`.
    pub async fn has_open_grant_job(&self, grant_id: &str, kind_suffix: &str) -> Result<bool> {
        let pattern = format!("%{kind_suffix}");
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT id FROM jobs WHERE grant_id = $1 AND kind LIKE $2 \
                 AND state IN ('pending', 'running') LIMIT 1",
            )
            .bind(grant_id)
            .bind(&pattern)
            .fetch_optional(p)
            .await?;
            Ok(row.is_some())
        })
    }
}
