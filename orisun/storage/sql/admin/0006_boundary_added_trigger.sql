-- Fires notify_boundary_added() for every boundary added to the catalog (delivered at commit, so a
-- node that hears of it finds the boundary's schema created and migrated).
CREATE TRIGGER boundary_added
    AFTER INSERT ON boundaries
    FOR EACH ROW EXECUTE FUNCTION notify_boundary_added();
