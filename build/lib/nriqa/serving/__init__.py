"""What users see: the web page, quality maps, folder scoring."""
