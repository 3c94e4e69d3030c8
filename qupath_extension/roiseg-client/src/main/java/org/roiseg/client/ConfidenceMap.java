package org.roiseg.client;

import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import javax.imageio.ImageIO;

/**
 * Where a model is unsure over a ROI's bounding box: a grey image, 0 = sure (class probability 1),
 * 255 = unsure (1 - the most probable class's probability), 0 outside the ROI. Map pixel (i, j) covers
 * full-resolution [originX + i * downsampleX, ...) x [originY + j * downsampleY, ...).
 *
 * @param width       map width in pixels
 * @param height      map height in pixels
 * @param originX     full-resolution x of the map's left edge
 * @param originY     full-resolution y of the map's top edge
 * @param downsampleX full-resolution pixels per map pixel, x
 * @param downsampleY full-resolution pixels per map pixel, y
 * @param png         the map as 8-bit grey PNG
 */
public record ConfidenceMap(int width, int height, double originX, double originY, double downsampleX,
                            double downsampleY, byte[] png) {

    /** Keeps a copy of the bytes. */
    public ConfidenceMap {
        png = png.clone();
    }

    static ConfidenceMap fromProto(org.roiseg.proto.v1.ConfidenceMap m) {
        return new ConfidenceMap(m.getWidth(), m.getHeight(), m.getOriginX(), m.getOriginY(), m.getDownsampleX(),
                m.getDownsampleY(), m.getPng().toByteArray());
    }

    /** The PNG bytes (a copy). */
    @Override
    public byte[] png() {
        return png.clone();
    }

    /** The map decoded: unsureness 0..255 per pixel, {@code width} x {@code height}. */
    public BufferedImage image() {
        try {
            BufferedImage image = ImageIO.read(new ByteArrayInputStream(png));
            if (image == null || image.getWidth() != width || image.getHeight() != height) {
                throw new IllegalStateException("the server's confidence map is not a " + width + " x " + height
                        + " PNG");
            }
            return image;
        } catch (IOException e) {
            throw new UncheckedIOException("the server's confidence map could not be decoded", e);
        }
    }

    /** Full-resolution width the map covers. */
    public double regionWidth() {
        return width * downsampleX;
    }

    /** Full-resolution height the map covers. */
    public double regionHeight() {
        return height * downsampleY;
    }
}
