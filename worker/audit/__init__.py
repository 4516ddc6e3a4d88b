"""Dataset audits: faithfulness (deletion/insertion), sanity checks, shortcut
detection, streaming aggregation and the report. Pure numpy/torch; see pipeline.py
for the entry points of the Celery tasks and REPORT.md for the report schema."""
