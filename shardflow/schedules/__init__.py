"""Schedules: workflows started on a clock (cron), exactly one run per tick."""
