"""User-defined HTTP cron jobs (the ``http-jobs`` service): projects, credentials, jobs, dispatch, execution logs.

This package is the domain: it never imports services, manager or runner. Schedule math is passed in
(see :class:`jobs.dispatch.ScheduleMath`); ``services.http_jobs`` supplies the platform's.
"""
