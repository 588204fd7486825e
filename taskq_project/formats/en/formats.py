"""Dates and times as every page of the admin shows them, Django's own pages
(a user's last login, an object's history) too: "2026-12-01 20:31:07 UTC",
as taskq_project.admin_site.timestamp writes them."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
