// plotly.js is large (~4.5 MB): load it on first use so pages (and the circuit graph) do not wait for it.
let plotly: Promise<typeof import("plotly.js-dist-min").default> | null = null;

export async function newPlot(el: HTMLElement, data: unknown[], layout: unknown, config: unknown): Promise<void> {
  plotly ??= import("plotly.js-dist-min").then((m) => m.default);
  await (await plotly).newPlot(el, data, layout, config);
}
