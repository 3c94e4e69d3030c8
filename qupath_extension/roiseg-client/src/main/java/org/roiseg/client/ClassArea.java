package org.roiseg.client;

/**
 * The total of one class in a result.
 *
 * @param name          class name
 * @param areaMicrons2  area of all its features in µm²
 * @param features      number of its features
 */
public record ClassArea(String name, double areaMicrons2, int features) {
}
