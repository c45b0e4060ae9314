"""SLA reports from jsonfile archives: read (archives -> arrays), sla (tables), render (HTML, PDF)."""
