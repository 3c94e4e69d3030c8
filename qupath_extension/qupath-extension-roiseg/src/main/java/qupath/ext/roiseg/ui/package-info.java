/**
 * The extension's user interface: the menu commands ({@link qupath.ext.roiseg.ui.RoisegCommand}),
 * dialogs, progress window and persistent preferences ({@link qupath.ext.roiseg.ui.RoisegPrefs}).
 */
package qupath.ext.roiseg.ui;
