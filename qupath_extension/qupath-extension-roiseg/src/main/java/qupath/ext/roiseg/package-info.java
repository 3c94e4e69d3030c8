/**
 * The roiseg QuPath extension: {@link qupath.ext.roiseg.RoisegExtension} (the menu),
 * {@link qupath.ext.roiseg.RoisegRunner} (segments annotations with a roiseg server) and
 * {@link qupath.ext.roiseg.ResultMapper} (places the results under their annotation). The other
 * classes of this package hold the logic that needs no QuPath classes (downsample, pixel size,
 * which objects a re-run replaces, server settings), unit-tested without QuPath.
 * {@link qupath.ext.roiseg.RoisegScripts} is the entry point for scripts.
 */
package qupath.ext.roiseg;
