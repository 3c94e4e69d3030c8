"""Files and formats: slides, QuPath GeoJSON (read + write), QuPath projects (paquo), ROI
geometry, class colours, raster coordinates, reference masks, overlays, atomic writes."""
