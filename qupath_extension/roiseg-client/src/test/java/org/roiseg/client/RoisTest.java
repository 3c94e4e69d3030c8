package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.locationtech.jts.geom.Coordinate;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.LinearRing;
import org.locationtech.jts.geom.Polygon;
import org.roiseg.proto.v1.Roi;

class RoisTest {

    static final GeometryFactory F = new GeometryFactory();

    static LinearRing ring(double... xy) {
        Coordinate[] c = new Coordinate[xy.length / 2 + 1];
        for (int i = 0; i < xy.length / 2; i++) {
            c[i] = new Coordinate(xy[2 * i], xy[2 * i + 1]);
        }
        c[c.length - 1] = c[0].copy();
        return F.createLinearRing(c);
    }

    static Polygon box(double x0, double y0, double x1, double y1) {
        return F.createPolygon(ring(x0, y0, x1, y0, x1, y1, x0, y1));
    }

    @Test
    void polygonWithHoleKeepsShellAndHole() {
        Polygon p = F.createPolygon(ring(100, 200, 900, 200, 900, 800, 100, 800),
                new LinearRing[] {ring(300, 300, 300, 500, 500, 500, 500, 300)});
        Roi roi = Rois.toProto(p);
        assertEquals(1, roi.getPolygonsCount());
        assertEquals(List.of(100.0, 200.0, 900.0, 200.0, 900.0, 800.0, 100.0, 800.0, 100.0, 200.0),
                roi.getPolygons(0).getShell().getXyList());
        assertEquals(1, roi.getPolygons(0).getHolesCount());
        assertEquals(List.of(300.0, 300.0, 300.0, 500.0, 500.0, 500.0, 500.0, 300.0, 300.0, 300.0),
                roi.getPolygons(0).getHoles(0).getXyList());
    }

    @Test
    void multiPolygonGivesOnePolygonMessageEach() {
        Geometry mp = F.createMultiPolygon(new Polygon[] {box(0, 0, 10, 10),
            F.createPolygon(ring(20, 20, 40, 20, 40, 40, 20, 40), new LinearRing[] {ring(25, 25, 25, 30, 30, 30, 30, 25)})});
        Roi roi = Rois.toProto(mp);
        assertEquals(2, roi.getPolygonsCount());
        assertEquals(0, roi.getPolygons(0).getHolesCount());
        assertEquals(1, roi.getPolygons(1).getHolesCount());
        assertEquals(10, roi.getPolygons(1).getHoles(0).getXyCount());
    }

    @Test
    void polygonalCollectionIsAccepted() {
        Geometry gc = F.createGeometryCollection(new Geometry[] {box(0, 0, 1, 1), box(2, 2, 3, 3)});
        assertEquals(2, Rois.toProto(gc).getPolygonsCount());
    }

    @Test
    void lineStringIsRejectedWithAClearMessage() {
        Geometry line = F.createLineString(new Coordinate[] {new Coordinate(0, 0), new Coordinate(10, 10)});
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Rois.toProto(line));
        assertTrue(e.getMessage().contains("LineString"), e.getMessage());
        assertTrue(e.getMessage().contains("Polygon"), e.getMessage());
    }

    @Test
    void pointsMixedCollectionsEmptyAndNullAreRejected() {
        assertThrows(IllegalArgumentException.class, () -> Rois.toProto(F.createPoint(new Coordinate(1, 1))));
        assertThrows(IllegalArgumentException.class, () -> Rois.toProto(F.createGeometryCollection(
                new Geometry[] {box(0, 0, 1, 1), F.createPoint(new Coordinate(1, 1))})));
        assertThrows(IllegalArgumentException.class, () -> Rois.toProto(F.createPolygon()));
        assertThrows(IllegalArgumentException.class, () -> Rois.toProto(null));
    }
}
