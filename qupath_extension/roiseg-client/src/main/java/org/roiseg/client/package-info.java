/**
 * Java client of the roiseg.v1 gRPC contract: asks a roiseg server to segment a region of
 * interest of a slide into tissue-class polygons.
 *
 * <p>Start with {@link org.roiseg.client.RoisegClient}. Geometries are JTS geometries in
 * full-resolution slide pixels (origin top-left, y down), as in QuPath. Failures are
 * {@link org.roiseg.client.RoisegException}s whose {@code getUserMessage()} can be shown to a
 * pathologist as it is.
 */
package org.roiseg.client;
