package qupath.ext.roiseg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.List;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.Test;
import org.roiseg.client.ConfidenceMap;
import org.roiseg.client.Conventions;
import qupath.lib.regions.ImagePlane;
import qupath.lib.regions.ImageRegion;

class ConfidenceLayerTest {

    /** A 4 x 2 map: sure, a little unsure, undecided between two classes, very unsure. */
    static ConfidenceMap map(double originX) throws IOException {
        BufferedImage grey = new BufferedImage(4, 2, BufferedImage.TYPE_BYTE_GRAY);
        int[] values = {0, 32, 128, 255};
        for (int x = 0; x < 4; x++) {
            grey.getRaster().setSample(x, 0, 0, values[x]);
            grey.getRaster().setSample(x, 1, 0, values[x]);
        }
        ByteArrayOutputStream png = new ByteArrayOutputStream();
        ImageIO.write(grey, "png", png);
        return new ConfidenceMap(4, 2, originX, 20, 2.5, 2.5, png.toByteArray());
    }

    @Test
    void sureIsTransparentUnsureIsOpaqueAndRegionsFollowTheMap() throws IOException {
        ConfidenceLayer layer = new ConfidenceLayer();
        assertTrue(layer.isEmpty());
        layer.put(ImagePlane.getDefaultPlane(), map(100.5));
        var regions = layer.regions();
        ImageRegion region = ImageRegion.createInstance(100, 20, 10, 5, 0, 0);
        assertEquals(List.of(region), List.copyOf(regions.keySet()));
        BufferedImage argb = regions.get(region);
        int[] alphas = new int[4];
        for (int x = 0; x < 4; x++) {
            int pixel = argb.getRGB(x, 1);
            alphas[x] = pixel >>> 24;
            assertEquals(Conventions.UNSURE_RGB, pixel & 0xFFFFFF);
        }
        assertEquals(0, alphas[0], "sure: transparent");
        assertTrue(alphas[1] > 0 && alphas[1] < alphas[2], "a little unsure: faint");
        assertEquals(ConfidenceLayer.MAX_ALPHA, alphas[2], "undecided between two classes: full");
        assertEquals(ConfidenceLayer.MAX_ALPHA, alphas[3]);

        layer.put(ImagePlane.getDefaultPlane(), map(100.5));
        assertEquals(1, layer.regions().size(), "the same ROI again replaces its map");
        layer.put(ImagePlane.getPlane(1, 0), map(100.5));
        layer.put(ImagePlane.getDefaultPlane(), map(300));
        assertEquals(3, layer.regions().size(), "another plane or place adds one");
    }
}
