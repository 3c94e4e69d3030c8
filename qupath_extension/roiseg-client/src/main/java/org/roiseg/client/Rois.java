package org.roiseg.client;

import java.util.ArrayList;
import java.util.List;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryCollection;
import org.locationtech.jts.geom.LineString;
import org.locationtech.jts.geom.MultiPolygon;
import org.locationtech.jts.geom.Polygon;
import org.roiseg.proto.v1.Ring;
import org.roiseg.proto.v1.Roi;

/** Converts a JTS region of interest to the contract's Roi message. */
final class Rois {

    private Rois() {
    }

    /**
     * The Roi message of a polygonal geometry in full-resolution pixels: a Polygon, a MultiPolygon,
     * or a GeometryCollection made only of those. Holes are kept; empty parts are dropped.
     *
     * @throws IllegalArgumentException for any other geometry (points, lines), an empty area or
     *                                  non-finite coordinates
     */
    static Roi toProto(Geometry geometry) {
        if (geometry == null) {
            throw new IllegalArgumentException("no ROI given: select an area annotation first");
        }
        List<Polygon> polygons = new ArrayList<>();
        collect(geometry, polygons);
        Roi.Builder roi = Roi.newBuilder();
        for (Polygon polygon : polygons) {
            if (polygon.isEmpty()) {
                continue;
            }
            org.roiseg.proto.v1.Polygon.Builder message = org.roiseg.proto.v1.Polygon.newBuilder()
                    .setShell(ring(polygon.getExteriorRing()));
            for (int i = 0; i < polygon.getNumInteriorRing(); i++) {
                if (!polygon.getInteriorRingN(i).isEmpty()) {
                    message.addHoles(ring(polygon.getInteriorRingN(i)));
                }
            }
            roi.addPolygons(message);
        }
        if (roi.getPolygonsCount() == 0) {
            throw new IllegalArgumentException("the ROI is empty: draw an area annotation (rectangle, ellipse, "
                    + "polygon or brush) around the region to segment");
        }
        return roi.build();
    }

    private static void collect(Geometry geometry, List<Polygon> polygons) {
        if (geometry instanceof Polygon) {
            polygons.add((Polygon) geometry);
        } else if (geometry instanceof MultiPolygon || geometry.getClass() == GeometryCollection.class) {
            for (int i = 0; i < geometry.getNumGeometries(); i++) {
                collect(geometry.getGeometryN(i), polygons);
            }
        } else {
            throw new IllegalArgumentException("the ROI must be an area (Polygon or MultiPolygon), not a "
                    + geometry.getGeometryType() + ": draw a rectangle, ellipse, polygon or brush annotation");
        }
    }

    private static Ring ring(LineString line) {
        Ring.Builder ring = Ring.newBuilder();
        for (Coordinate c : line.getCoordinates()) {
            if (!(Double.isFinite(c.x) && Double.isFinite(c.y))) {
                throw new IllegalArgumentException("the ROI has a non-finite coordinate: " + c);
            }
            ring.addXy(c.x).addXy(c.y);
        }
        return ring.build();
    }
}
