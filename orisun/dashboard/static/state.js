// What the whole dashboard shares: the signed-in session and the cached boundary names.

export const state = {
  session: null,
  boundaries: null, // names, from /api/boundaries (or the overview), the last ones seen
  internal: new Set(), // of those, Orisun's own (the admin boundary): listed apart
};

export function isAdmin() {
  return Boolean(state.session && (state.session.roles || []).includes("ADMIN"));
}
